"""Utility of a recommender (AUC, accuracy, log loss): below model/, whose training keeps the epoch
with the best valid AUC. What else judges a model is evals/."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score


def classification(
    labels: np.ndarray,
    p_yes: np.ndarray,
    threshold: float | None = None,
    log_odds: np.ndarray | None = None,
) -> dict[str, float]:
    """AUC, accuracy and log loss of P(Yes) against 0/1 labels (sklearn). The AUC ranks by
    `log_odds` (the Yes-No logit difference) when given: confident models' P(Yes) tie at 1.0.
    Accuracy is at 0.5, or at `threshold` (chosen on valid by `evals.evaluation.best_threshold`)
    with `acc_05` the one at 0.5."""
    labels, p_yes = np.asarray(labels), np.clip(np.asarray(p_yes, np.float64), 1e-7, 1 - 1e-7)
    rank = p_yes if log_odds is None else np.asarray(log_odds, np.float64)
    out = {
        "auc": auc(labels, rank),
        "acc": float(accuracy_score(labels, p_yes > (0.5 if threshold is None else threshold))),
        "logloss": float(log_loss(labels, p_yes, labels=[0, 1])),
    }
    if threshold is not None:
        out["acc_05"] = float(accuracy_score(labels, p_yes > 0.5))
    return out


def scored_classification(samples, scores: dict, threshold: float | None = None) -> dict:
    """`classification` of samples (each with its 0/1 `label`) from what `score` returned."""
    labels = np.array([s.label for s in samples])
    return classification(labels, scores["p_yes"], threshold, scores["log_odds"])


def auc(labels: np.ndarray, rank: np.ndarray, weight: np.ndarray | None = None) -> float:
    """ROC AUC, NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(set(labels[weight > 0].tolist() if weight is not None else labels.tolist())) < 2:
        return math.nan
    return float(roc_auc_score(labels, rank, sample_weight=weight))
