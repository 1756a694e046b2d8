"""What a bench measures of one model: utility, forgetting, membership, canaries.

Every model is seen through a scorer (samples -> P(Yes), loss and, on request, the vocabulary
distribution at the answer position), so a trained recommender and the no-training reference
rule (`history_mean`) are measured by the same code on the same samples.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from e2urec.data.deletion import shown_ratings
from e2urec.data.sample import YES, Sample
from e2urec.evals import mia
from e2urec.evals.intervals import auc_ci
from e2urec.evals.sets import EvalSets
from e2urec.metrics import scored_classification
from e2urec.model import loader, score
from e2urec.model.frozen import StoredBottom

Scorer = Callable[[list[Sample], bool], dict]
# Forgotten samples scored at a time with their distributions: the demo's fit in one chunk (so
# its batches are the ones a single call forms), the paper's 6,500 take 0.13 GB a chunk.
CHUNK = 1024
_STARS = re.compile(r"\((\d+(?:\.\d+)?) stars?\)$")


def best_threshold(labels: np.ndarray, p_yes: np.ndarray) -> float:
    """The cut that maximises accuracy on these (valid) samples: midway between neighbouring
    scores, so that a model whose every score sits above 0.5 is not read as all "Yes"."""
    order = np.sort(np.unique(np.asarray(p_yes, np.float64)))
    cuts = np.concatenate([[order[0] - 1e-9], (order[:-1] + order[1:]) / 2, [order[-1]]])
    labels = np.asarray(labels)
    accuracy = [np.mean((p_yes > c) == labels) for c in cuts]
    return float(cuts[int(np.argmax(accuracy))])


def model_scorer(model, batch_size: int, bottom: StoredBottom | None = None) -> Scorer:
    """Scores of `model`; from `bottom`'s stored states when its bottom is the stored one (every
    row of a top-layers bench: only the top layers run, as in training)."""
    rec = loader.load(model) if isinstance(model, str) else model
    name = Path(rec.path).name
    states = bottom.states_for(rec) if bottom else None

    def scorer(samples: list[Sample], full: bool) -> dict:
        return score(rec, samples, batch_size, full=full, desc=f"eval {name}", states=states)

    return scorer


def shown_mean(sample: Sample) -> float:
    """The mean of the star ratings shown in the prompt's history (mid-scale if none)."""
    if sample.history:
        known = [r for _, r in sample.history if r is not None]
        return float(np.mean(known)) if known else 2.75
    stars = [float(m.group(1)) for e in shown_ratings(sample) if (m := _STARS.search(e))]
    return float(np.mean(stars)) if stars else 2.75


def shows_ratings(samples: list[Sample]) -> bool:
    """Whether any prompt shows a known rating: imported prompts name their items only, and
    the rule would score them all alike."""
    return any(r is not None for s in samples for _, r in s.history) or any(
        not s.history and shown_ratings(s) for s in samples
    )


def history_mean_scorer(samples: list[Sample], full: bool = False) -> dict:
    """The reference with no training: P(Yes) = the mean shown rating mapped from the 0.5-5
    star scale onto (0, 1). Its ranking (AUC) is the rule's; its LogLoss is uncalibrated."""
    p = np.clip((np.array([shown_mean(s) for s in samples]) - 0.5) / 4.5, 1e-3, 1 - 1e-3)
    labels = np.array([s.label for s in samples])
    loss = -np.log(np.where(labels == 1, p, 1 - p))
    return {"p_yes": p, "loss": loss, "log_odds": np.log(p) - np.log1p(-p)}


def evaluate(
    scorer: Scorer, sets: EvalSets, seed: int = 0, dist_path: Path | None = None
) -> tuple[dict, dict]:
    """Metrics of one model, and its scores on `sets.forget` (with the vocabulary
    distribution, for closeness to Retrain, streamed into `dist_path` when given)."""
    valid = scorer(sets.valid, False)
    cut = best_threshold(_labels(sets.valid), valid["p_yes"])
    test = scorer(sets.test, False)
    forget = forget_scores(scorer, sets.forget, dist_path)
    members, nonmembers, unseen = (
        mia.sample_features(s, scorer(s, False))
        for s in (sets.attack.members, sets.attack.nonmembers, sets.attack.unseen)
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
        controls = planted_log_odds(scorer, sets.controls)
        for key, planted in (
            ("canary_exposure", sets.canaries),
            ("canary_retained", sets.canaries_retained),
        ):
            metrics[key] = metrics[f"{key}_ci"] = None
            if planted:
                scores = np.concatenate([planted_log_odds(scorer, planted), controls])
                kind = np.concatenate([np.ones(len(planted)), np.zeros(len(controls))])
                users = _users(planted) + _users(sets.controls)
                metrics[key] = exposure(scores[kind == 1], scores[kind == 0])
                metrics[f"{key}_ci"] = auc_ci(kind, scores, users, seed=seed)
    return metrics, forget


def _labels(samples: list[Sample]) -> np.ndarray:
    return np.array([s.label for s in samples])


def _users(samples: list[Sample]) -> list[str]:
    return [s.user for s in samples]


def exposure(planted: np.ndarray, controls: np.ndarray) -> float:
    """AUC of the planted answer's log-odds, planted canaries (1) against controls (0):
    0.5 when the model answers planted canaries no better than ones it never saw."""
    y = np.concatenate([np.ones(len(planted)), np.zeros(len(controls))])
    return float(roc_auc_score(y, np.concatenate([planted, controls])))


def planted_log_odds(scorer: Scorer, canaries: list[Sample]) -> np.ndarray:
    log_odds = scorer(canaries, False)["log_odds"]
    return np.where([s.output == YES for s in canaries], log_odds, -log_odds)


def forget_scores(scorer: Scorer, samples: list[Sample], dist_path: Path | None) -> dict:
    """Scores of the forgotten samples; with `dist_path`, their vocabulary distributions go
    into that .npy a chunk of samples at a time and come back as `Rows` read from it a block
    at a time: at the paper's scale one row's [N, V] is 0.8 GB, and a bench has eleven rows."""
    if dist_path is None or not samples:
        return scorer(samples, True)
    parts, fh = [], None
    try:
        for start in range(0, len(samples), CHUNK):
            out = scorer(samples[start : start + CHUNK], True)
            if "dist" in out:
                dist = np.ascontiguousarray(out.pop("dist"), "<f4")
                if fh is None:
                    fh = open(dist_path, "wb")  # noqa: SIM115 (closed below)
                    header = {"descr": "<f4", "fortran_order": False}
                    shape = (len(samples), dist.shape[1])
                    np.lib.format.write_array_header_1_0(fh, {**header, "shape": shape})
                fh.write(dist.tobytes())
            parts.append(out)
    finally:
        if fh is not None:
            fh.close()
    scores = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if fh is not None:
        scores["dist"] = Rows(dist_path)
    return scores


class Rows:
    """A 2-D .npy read a block of rows at a time by `rows[a:b]`. Not a memory map: the pages of
    a map count in the process's resident memory until the kernel drops them, so reading
    eleven 0.8 GB rows through maps shows as 9 GB."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version != (1, 0):
                raise ValueError(f"{self.path}: .npy version {version}, expected 1.0")
            shape, fortran, self.dtype = np.lib.format.read_array_header_1_0(fh)
            self.offset = fh.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{self.path}: expected a C-ordered 2-D array, got shape {shape}")
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("Rows reads contiguous blocks only")
        width = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * width)
            data = fh.read(max(0, stop - start) * width)
        return np.frombuffer(data, self.dtype).reshape(-1, self.shape[1])

    def __array__(self, dtype=None, copy=None):  # np.asarray(rows): the whole array
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)
