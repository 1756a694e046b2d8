"""Early stopping replayed: what a smaller `patience` would have kept, from runs already made.

Every training of a bench (originals, Retrain, retrain_b, SISA and RecEraser shards) records its
valid loss after each epoch in `train_report.json`. Neither the batches nor the lr schedule
(its horizon is the epoch cap) depend on patience, so the epochs up to a smaller patience's stop
are the same epochs: replaying the rule on the recorded losses gives exactly the epoch it would
have kept and how many epochs it would have run. Prints one line per training whose kept epoch
would change, then the totals.

    python benchmarks/patience_replay.py runs/demo-lin6 runs/study-lin6 --patience 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def replay(losses: list[float], patience: int) -> tuple[int, int]:
    """(kept epoch, epochs run) under train.py's rule: stop once `patience` epochs have passed
    without a lower valid loss than the best so far."""
    best, best_loss = 0, float("inf")
    for epoch, loss in enumerate(losses, 1):
        if loss < best_loss:
            best, best_loss = epoch, loss
        if epoch - best >= patience:
            return best, epoch
    return best, len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--patience", type=int, default=1)
    args = parser.parse_args()
    changed = trainings = epochs = saved = 0
    for run in args.runs:
        for path in sorted(run.rglob("train_report.json")):
            report = json.loads(path.read_text())
            losses = [h["valid_loss"] for h in report.get("history", [])]
            if not losses:
                continue
            recorded = replay(losses, report["config"]["patience"])
            if recorded != (report["best_epoch"], report["epochs_run"]):
                raise SystemExit(f"{path}: the replay does not match the recorded run")
            kept, ran = replay(losses, args.patience)
            trainings += 1
            epochs += recorded[1]
            saved += recorded[1] - ran
            if kept != recorded[0]:
                changed += 1
                losses_text = " ".join(f"{x:.4f}" for x in losses)
                print(f"{path.parent}: keeps epoch {kept} instead of {recorded[0]} ({losses_text})")
    print(
        f"patience {args.patience}: {changed} of {trainings} trainings keep another epoch; "
        f"{saved} of {epochs} epochs ({saved / max(1, epochs):.0%}) not run"
    )


if __name__ == "__main__":
    main()
