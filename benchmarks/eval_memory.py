"""Peak memory of the bench's closeness evaluation at the paper's scale.

Eleven rows (the original, Retrain, retrain_b, the methods) each give the vocabulary
distribution at the answer position for every reported forgotten sample: 6,500 x 32,128 float32
in the paper's setting (ML-1M's eval half of 20% of users, T5's vocabulary), 0.84 GB a row. The
bench writes each row's distributions to disk as it scores them (`forget_scores`) and compares
every row with Retrain a block of rows at a time (`against_retrain`); this runs exactly those two
functions on synthetic distributions and prints the peak resident memory, beside what holding
every row at once would take.

    python benchmarks/eval_memory.py [--samples 6500 --vocab 32128 --rows 11 --out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from e2urec.data.sample import YES, Sample
from e2urec.evals.evaluation import forget_scores
from e2urec.evals.retrain import against_retrain
from e2urec.memory import PeakMemory, current_rss_mb

ROWS = ["original", "retrain", "retrain_b", "e2urec", "sisa", "receraser", "neggrad"]
ROWS += ["bad_t", "bad_teacher", "scrub", "zero-shot"]


def synthetic_scorer(seed: int, vocab: int):
    """Scores as the model scorer returns them, from seeded random logits (row-specific)."""

    def scorer(samples: list[Sample], full: bool) -> dict:
        rng = np.random.default_rng([seed, samples[0].timestamp])
        logits = rng.standard_normal((len(samples), vocab), dtype=np.float32) * 3
        logits -= logits.max(1, keepdims=True)
        dist = np.exp(logits)
        dist /= dist.sum(1, keepdims=True)
        log_odds = (logits[:, 0] - logits[:, 1]).astype(np.float64)
        p_yes = 1 / (1 + np.exp(-log_odds))
        return {"p_yes": p_yes, "loss": -np.log(p_yes), "log_odds": log_odds, "dist": dist}

    return scorer


def main(samples: int, vocab: int, rows: int, out: Path) -> None:
    forget = [Sample("", YES, f"u{i % 700}", str(i), 5, i) for i in range(samples)]
    names = ROWS[:rows]
    before = current_rss_mb()
    start = time.perf_counter()
    with PeakMemory() as peak:
        dists = {}
        for seed, name in enumerate(names):
            dists[name] = forget_scores(synthetic_scorer(seed, vocab), forget, out / f"{name}.npy")
        table = {name: {"mia_auc": 0.5} for name in names}
        against_retrain(table, dists, [s.user for s in forget], seed=0)
    held = rows * samples * vocab * 4 / 2**20
    print(f"{rows} rows x {samples} samples x {vocab} tokens, {time.perf_counter() - start:.0f} s")
    print(
        f"peak RSS {peak.mb:.0f} MB (at start {before:.0f} MB); every row in memory: {held:.0f} MB"
    )
    print(f"e2urec JSD to Retrain {table['e2urec']['jsd']:.4f} (synthetic: a check that it ran)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6500)
    parser.add_argument("--vocab", type=int, default=32128)
    parser.add_argument("--rows", type=int, default=11)
    parser.add_argument("--out", type=Path, help="folder for the rows' files (default: a temp)")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        main(args.samples, args.vocab, args.rows, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(args.samples, args.vocab, args.rows, Path(tmp))
