"""Comparing unlearning methods: the bench (runs, seeds, worker processes, resumable stages),
the tune, request timing, tables and plots. What it measures is evals/.

It may import everything below it (api, evals, methods, model, data and the shared modules),
never deploy/, service/ or cli.
"""

from e2urec.bench.config import Bench, merge, preset
from e2urec.bench.over_seeds import aggregate, paired_over_seeds
from e2urec.bench.run import run_bench

__all__ = ["Bench", "aggregate", "merge", "paired_over_seeds", "preset", "run_bench"]
