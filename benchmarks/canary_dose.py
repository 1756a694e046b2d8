"""Canary dose: does the original, trained by the preset's rule, memorise its canaries?

For each number of copies, prepares the preset's data with that many copies of each canary,
trains the original (early stopping on valid loss, as the bench does) and prints its test AUC,
the epochs run, and the canaries' exposure (AUC of the planted answer's log-odds against
controls; 0.5: nothing memorised) with the mean log-odds gap, for forgotten and retained users.
Runs one process per dose side by side (single-thread each).

    OMP_NUM_THREADS=1 python benchmarks/canary_dose.py --copies 8,16 --out runs/canary-dose
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from e2urec.bench import Bench, preset
from e2urec.bench.pool import worker_pool
from e2urec.bench.run import setup
from e2urec.data.canaries import unique
from e2urec.evals.evaluation import exposure, model_scorer, planted_log_odds
from e2urec.metrics import scored_classification


def dose(bench: Bench, copies: int, out: Path) -> dict:
    bench = replace(bench, protocol=replace(bench.protocol, canary_copies=copies))
    run = setup(bench, out / f"copies-{copies}")
    scorer = model_scorer(run.original, bench.eval_batch_size)
    controls = planted_log_odds(scorer, run.splits["canary_control"])
    row = {"copies": copies, "train_rows": len(run.splits["train"]), **run.rows["original"]}
    test = scorer(run.splits["test"], False)
    row["test_auc"] = scored_classification(run.splits["test"], test)["auc"]
    for key, split in (("forgotten", "forget"), ("retained", "retain")):
        planted = planted_log_odds(scorer, unique(run.splits[split]))
        row[key] = {
            "canaries": len(planted),
            "exposure": exposure(planted, controls),
            "log_odds_gap": float(planted.mean() - controls.mean()),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--copies", default="8,16", help="comma-separated copies per canary")
    parser.add_argument("--out", default="runs/canary-dose")
    args = parser.parse_args()
    bench = Bench.from_dict(preset(args.preset))
    doses = [int(c) for c in args.copies.split(",")]
    with worker_pool(len(doses)) as pool:
        rows = list(pool.map(dose, [bench] * len(doses), doses, [Path(args.out)] * len(doses)))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
