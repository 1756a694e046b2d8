"""Comparing unlearning methods: the bench (runs, seeds, worker processes, resumable stages),
the tune, the evaluation sets and their metrics, request timing, tables and plots.

It may import everything below it (api, methods, model, data and the shared modules), never
deploy/, service/ or cli.
"""

from e2urec.bench.config import Bench, merge, preset
from e2urec.bench.over_seeds import aggregate, paired_over_seeds
from e2urec.bench.run import run_bench

__all__ = ["Bench", "aggregate", "merge", "paired_over_seeds", "preset", "run_bench"]
