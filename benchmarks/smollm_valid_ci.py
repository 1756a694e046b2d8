"""Valid AUC of SmolLM2 models with intervals over users, and each one against the first.

    OMP_NUM_THREADS=1 python benchmarks/smollm_valid_ci.py [--split test] DATA MODEL [MODEL ...]

MODEL: a model name or folder for `e2urec.model.loader` (`smollm2`: the untuned model; a folder
that benchmarks/smollm_settings.py trained). Scores DATA's valid split at full depth, then
prints one JSON line per model: its valid AUC (on the Yes-No logit difference) with the 95%
cluster-bootstrap interval over users, and its paired AUC differences to the first MODEL and to
history_mean under the same user draws (a user's samples move together), beside history_mean's. Valid by default,
because settings are chosen on it; `--split test` only reports a finished table's models (the
tuned original against zero-shot and history_mean), never to choose anything.
"""

import json
import sys

import numpy as np
import torch

from e2urec.data import load_splits
from e2urec.evals.evaluation import history_mean_scorer
from e2urec.evals.intervals import auc_ci, user_draws
from e2urec.metrics import auc
from e2urec.model import loader
from e2urec.model.scoring import score


def paired(labels, rank, base, users) -> list[float]:
    draws = user_draws(users)
    gaps = np.array([auc(labels, rank, w) - auc(labels, base, w) for w in draws])
    return [float(v) for v in np.percentile(gaps[gaps == gaps], [2.5, 97.5])]


def main(data: str, models: list[str], split: str = "valid") -> list[dict]:
    torch.set_num_threads(1)
    valid = load_splits(data)[split]
    labels = np.array([s.label for s in valid])
    users = [s.user for s in valid]
    ranks = {"history_mean": history_mean_scorer(valid)["log_odds"]}
    for name in models:
        ranks[name] = score(loader.load(name), valid, 16)["log_odds"]
    rows = []
    for name, rank in ranks.items():
        row = {"model": name, f"{split}_auc": round(auc(labels, rank), 4)}
        row["ci"] = [round(v, 4) for v in auc_ci(labels, rank, users)]
        for ref, key in ((models[0], "minus_first"), ("history_mean", "minus_history_mean")):
            if name != ref:
                row[key] = round(auc(labels, rank) - auc(labels, ranks[ref]), 4)
                row[f"{key}_ci"] = [round(v, 4) for v in paired(labels, rank, ranks[ref], users)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.pop(args.index("--split") + 1) if "--split" in args else "valid"
    args = [a for a in args if a != "--split"]
    main(args[0], args[1:], split)
