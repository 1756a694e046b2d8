"""Data: raw formats -> interactions -> prompts -> splits."""

from e2urec.data.prepare import SPLITS, load_splits, prepare
from e2urec.data.protocol import Protocol
from e2urec.data.sample import NO, YES, Sample, read_jsonl, write_jsonl

__all__ = [
    "NO",
    "SPLITS",
    "YES",
    "Protocol",
    "Sample",
    "load_splits",
    "prepare",
    "read_jsonl",
    "write_jsonl",
]
