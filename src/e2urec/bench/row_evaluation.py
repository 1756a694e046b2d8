"""Every row of a bench evaluated on the same sets (evals/), each as a resumable stage, then
against Retrain (`evals.retrain`) from each row's distributions kept on disk."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from e2urec.bench.resumable import local_inputs, stage
from e2urec.evals.evaluation import (
    Rows,
    evaluate,
    history_mean_scorer,
    model_scorer,
    shows_ratings,
)
from e2urec.evals.retrain import against_retrain
from e2urec.evals.sets import EvalSets
from e2urec.model import loader

if TYPE_CHECKING:
    from e2urec.bench.config import Bench

FORGET = "forget_scores.npz"
FORGET_DIST = "forget_dist.npy"


def evaluate_all(
    models: dict, rows: dict, sets: EvalSets, bench: Bench, cache=None, bottom=None
) -> None:
    """Every model and the no-training rule on the same sets; then, against Retrain: closeness
    on the forget set with intervals and verdicts, forget quality and PrivLeak. With `cache`
    (a folder), each model's evaluation is a resumable stage there; without, the rows'
    distributions wait in a temporary folder. `bottom`: the stored states a model whose bottom
    is the backbone's is scored from (`evaluate_row`)."""
    with contextlib.ExitStack() as stack:
        root = Path(cache) if cache else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        dists = {}
        for name, model in models.items():
            folder = root / name
            metrics, dists[name] = evaluate_row(model, sets, bench, folder, bool(cache), bottom)
            rows[name].update(metrics)
        # A full run (not a sequential step): the reference rule too, where it has ratings to read.
        if "original" in models and shows_ratings(sets.test):
            rows["history_mean"] = {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}
            rows["history_mean"].update(evaluate(history_mean_scorer, sets, bench.mia_seed)[0])
        against_retrain(rows, dists, [s.user for s in sets.forget], bench.mia_seed)


def evaluate_row(
    model: str, sets: EvalSets, bench: Bench, folder: Path, resumable=True, bottom=None
):
    """(metrics, forget scores) of one model, the scores kept in `folder` (the distributions
    read from there a block at a time); `resumable`: a stage there, reused when its inputs are
    unchanged. With `bottom` (a StoredBottom) a model whose weights below the top layers are
    the backbone's runs only its top layers from the stored states, as it was trained."""

    def work(out: Path) -> dict:  # loads the model only when the stage must run
        rec = loader.load(model, answers=bench.protocol.answers)
        scorer = model_scorer(rec, bench.eval_batch_size, bottom)
        metrics, forget = evaluate(scorer, sets, bench.mia_seed, out / FORGET_DIST)
        np.savez(out / FORGET, **{k: v for k, v in forget.items() if k != "dist"})
        return metrics

    if not resumable:
        folder.mkdir(parents=True)
        return work(folder), read_forget(folder)
    # "ranks", "forget_dist": evaluations kept from before AUCs ranked by log-odds and the
    # distributions went to their own file are not reused.
    settings = {
        "mia_seed": bench.mia_seed,
        "eval_batch_size": bench.eval_batch_size,
        "ranks": "log_odds",
        "forget_dist": FORGET_DIST,
        "bottom": bottom is not None,
    }
    data = folder.parent.parent / "data"  # folder is <run>/eval/<row>
    stored = [bottom.path] if bottom else []
    metrics = stage(folder, settings, [data, *local_inputs(model), *stored], work)
    return metrics, read_forget(folder)


def read_forget(folder: Path) -> dict:
    scores = dict(np.load(folder / FORGET))
    if (folder / FORGET_DIST).exists():
        scores["dist"] = Rows(folder / FORGET_DIST)
    return scores
