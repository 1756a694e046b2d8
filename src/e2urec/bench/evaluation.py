"""What the bench measures of one model: utility, forgetting, membership, canaries.

Every model is seen through a scorer (samples -> P(Yes), loss and, on request, the vocabulary
distribution at the answer position), so a trained recommender and the no-training reference
rule (`history_mean`) are measured by the same code on the same samples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from e2urec import mia
from e2urec.bench.resumable import local_inputs, stage
from e2urec.data.canaries import real, unique
from e2urec.data.deletion import shown_ratings
from e2urec.data.sample import YES, Sample
from e2urec.maths import js_divergence
from e2urec.metrics import (
    auc_ci,
    best_threshold,
    closeness,
    exposure,
    forget_quality,
    jsd_verdict,
    scored_classification,
)
from e2urec.mia import privleak
from e2urec.model import loader, score

if TYPE_CHECKING:
    from e2urec.bench.config import Bench

Scorer = Callable[[list[Sample], bool], dict]
_STARS = re.compile(r"\((\d+(?:\.\d+)?) stars?\)$")


@dataclass
class EvalSets:
    """The samples a model is measured on (all real, except the canaries)."""

    test: list[Sample]
    valid: list[Sample]
    forget: list[Sample]  # forgotten users' real samples on which forgetting is reported
    members: list[Sample]  # retain samples the attack learns as members
    nonmembers: list[Sample]  # held-out samples the attack learns as non-members
    unseen: list[Sample]  # other held-out samples, scored against `forget`
    canaries: list[Sample]  # planted in forgotten users' data
    canaries_retained: list[Sample]  # planted in retained users' data
    controls: list[Sample]  # made the same way, never trained on

    @classmethod
    def make(cls, splits: dict, forget: list[Sample], seed: int = 0) -> EvalSets:
        """`forget`: the forgotten samples to report on (canaries among them are split off).
        The attack's non-members are the held-out split, or test without one."""
        retain = real(splits["retain"])
        pool = splits.get("holdout") or splits["test"]
        plan = mia.Plan.make(len(retain), len(pool), seed)
        users = {s.user for s in forget}
        return cls(
            test=splits["test"],
            valid=splits["valid"],
            forget=real(forget),
            members=[retain[i] for i in plan.members],
            nonmembers=[pool[i] for i in plan.nonmembers],
            unseen=[pool[i] for i in plan.unseen],
            canaries=[s for s in unique(splits["forget"]) if s.user in users],
            canaries_retained=unique(splits["retain"]),
            controls=splits.get("canary_control") or [],
        )


def model_scorer(model, batch_size: int) -> Scorer:
    rec = loader.load(model) if isinstance(model, str) else model
    name = Path(rec.path).name
    return lambda samples, full: score(rec, samples, batch_size, full=full, desc=f"eval {name}")


def shown_mean(sample: Sample) -> float:
    """The mean of the star ratings shown in the prompt's history (mid-scale if none)."""
    stars = [float(m.group(1)) for e in shown_ratings(sample) if (m := _STARS.search(e))]
    return float(np.mean(stars)) if stars else 2.75


def history_mean_scorer(samples: list[Sample], full: bool = False) -> dict:
    """The reference with no training: P(Yes) = the mean shown rating mapped from the 0.5-5
    star scale onto (0, 1). Its ranking (AUC) is the rule's; its LogLoss is uncalibrated."""
    p = np.clip((np.array([shown_mean(s) for s in samples]) - 0.5) / 4.5, 1e-3, 1 - 1e-3)
    labels = np.array([s.label for s in samples])
    loss = -np.log(np.where(labels == 1, p, 1 - p))
    return {"p_yes": p, "loss": loss, "log_odds": np.log(p) - np.log1p(-p)}


def evaluate(scorer: Scorer, sets: EvalSets, seed: int = 0) -> tuple[dict, dict]:
    """Metrics of one model, and its scores on `sets.forget` (with the vocabulary
    distribution, for closeness to Retrain)."""
    valid = scorer(sets.valid, False)
    cut = best_threshold(_labels(sets.valid), valid["p_yes"])
    test = scorer(sets.test, False)
    forget = scorer(sets.forget, True)
    members, nonmembers, unseen = (
        mia.sample_features(s, scorer(s, False))
        for s in (sets.members, sets.nonmembers, sets.unseen)
    )
    metrics = {
        "test": {
            **scored_classification(sets.test, test, cut),
            "auc_ci": auc_ci(_labels(sets.test), test["log_odds"], _users(sets.test), seed=seed),
        },
        "forget": scored_classification(sets.forget, forget, cut),
        "threshold": cut,
        "mia_auc": mia.mia_auc(
            members, nonmembers, mia.sample_features(sets.forget, forget), unseen, seed
        ),
    }
    if sets.controls:
        controls = _planted_log_odds(scorer, sets.controls)
        for key, planted in (
            ("canary_exposure", sets.canaries),
            ("canary_retained", sets.canaries_retained),
        ):
            metrics[key] = metrics[f"{key}_ci"] = None
            if planted:
                scores = np.concatenate([_planted_log_odds(scorer, planted), controls])
                kind = np.concatenate([np.ones(len(planted)), np.zeros(len(controls))])
                users = _users(planted) + _users(sets.controls)
                metrics[key] = exposure(scores[kind == 1], scores[kind == 0])
                metrics[f"{key}_ci"] = auc_ci(kind, scores, users, seed=seed)
    return metrics, forget


def _labels(samples: list[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples])


def _users(samples: list[Sample]) -> list[str]:
    return [s.user for s in samples]


def _planted_log_odds(scorer: Scorer, canaries: list[Sample]) -> np.ndarray:
    log_odds = scorer(canaries, False)["log_odds"]
    return np.where([s.output == YES for s in canaries], log_odds, -log_odds)


def evaluate_all(models: dict, rows: dict, sets: EvalSets, bench: Bench, cache=None) -> None:
    """Every model and the no-training rule on the same sets; then, against Retrain: closeness
    on the forget set with paired bootstrap intervals and verdicts, and PrivLeak. With `cache`
    (a folder), each model's evaluation is a resumable stage there."""
    dists = {}
    for name, model in models.items():
        metrics, dists[name] = evaluate_row(model, sets, bench, cache and Path(cache) / name)
        rows[name].update(metrics)
    if "original" in models:  # a full run (not a sequential step): the reference rule too
        rows["history_mean"] = {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}
        rows["history_mean"].update(evaluate(history_mean_scorer, sets, bench.mia_seed)[0])
    ref = dists.get("retrain")
    per_sample = {}
    for name, row in rows.items():
        if ref is None or name not in dists:
            row.update(dict.fromkeys(NEEDS_RETRAIN))
            continue
        f = dists[name]
        row.update(closeness(f["dist"], ref["dist"], f["p_yes"], ref["p_yes"]))
        row["forget_quality"] = forget_quality(f["log_odds"], ref["log_odds"])
        per_sample[name] = js_divergence(f["dist"], ref["dist"])
        row["privleak"] = privleak(row["mia_auc"], rows["retrain"]["mia_auc"])
    if {"original", "retrain_b"} <= per_sample.keys():
        users, original, floor = (
            _users(sets.forget),
            per_sample["original"],
            per_sample["retrain_b"],
        )
        for name, jsd in per_sample.items():
            rows[name].update(jsd_verdict(jsd, original, floor, users, bench.mia_seed))


NEEDS_RETRAIN = ("jsd", "sym_kl", "l2", "jsd_yes_no", "forget_quality", "privleak")
FORGET = "forget_scores.npz"


def evaluate_row(model: str, sets: EvalSets, bench: Bench, folder: Path | None):
    """(metrics, forget scores) of one model; with `folder`, a resumable stage that keeps
    the forget scores beside its marker."""
    if folder is None:
        return evaluate(model_scorer(model, bench.eval_batch_size), sets, bench.mia_seed)

    def work(out: Path) -> dict:  # loads the model only when the stage must run
        metrics, forget = evaluate(model_scorer(model, bench.eval_batch_size), sets, bench.mia_seed)
        np.savez(out / FORGET, **forget)
        return metrics

    # "ranks": an evaluation kept from before AUCs ranked by log-odds is not reused.
    settings = {
        "mia_seed": bench.mia_seed,
        "eval_batch_size": bench.eval_batch_size,
        "ranks": "log_odds",
    }
    data = folder.parent.parent / "data"  # folder is <run>/eval/<row>
    metrics = stage(folder, settings, [data, *local_inputs(model)], work)
    return metrics, dict(np.load(folder / FORGET))
