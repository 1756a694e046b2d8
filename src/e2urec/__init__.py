"""e2urec: make an LLM-based recommender forget users' data (E2URec and its baselines)."""

__version__ = "0.1.0"
