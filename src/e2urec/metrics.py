"""Metrics: utility of a recommender, and how close its outputs are to the retrained model's."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from e2urec.functional import js_divergence, l2_distance, symmetric_kl

# Which way is better, for tables and plots.
HIGHER_IS_BETTER = {
    "auc": True,
    "acc": True,
    "logloss": False,
    "jsd": False,
    "sym_kl": False,
    "l2": False,
    "jsd_yes_no": False,
    "seconds": False,
    "mia_auc": None,
}


def classification(labels: np.ndarray, p_yes: np.ndarray) -> dict[str, float]:
    """AUC, accuracy at 0.5 and log loss of P(Yes) against 0/1 labels (sklearn)."""
    labels, p_yes = np.asarray(labels), np.clip(np.asarray(p_yes, np.float64), 1e-7, 1 - 1e-7)
    auc = roc_auc_score(labels, p_yes) if len(set(labels.tolist())) == 2 else math.nan
    return {
        "auc": float(auc),
        "acc": float(accuracy_score(labels, p_yes > 0.5)),
        "logloss": float(log_loss(labels, p_yes, labels=[0, 1])),
    }


def closeness(dist: np.ndarray, ref_dist: np.ndarray, p_yes: np.ndarray, ref_p_yes: np.ndarray):
    """Mean distances to the reference (Retrain) over samples, at the answer position.

    jsd: Jensen-Shannon divergence (base 2) over the vocabulary; sym_kl: what the paper's code
    reports as "JSD"; l2: between the probability vectors; jsd_yes_no: JSD over (Yes, No).
    """
    pair = np.stack([p_yes, 1 - p_yes], axis=1)
    ref_pair = np.stack([ref_p_yes, 1 - ref_p_yes], axis=1)
    return {
        "jsd": float(js_divergence(dist, ref_dist).mean()),
        "sym_kl": float(symmetric_kl(dist, ref_dist).mean()),
        "l2": float(l2_distance(dist, ref_dist).mean()),
        "jsd_yes_no": float(js_divergence(pair, ref_pair).mean()),
    }
