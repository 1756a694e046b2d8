"""Metrics: utility of a recommender, and how close its outputs are to the retrained model's."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from e2urec.maths import js_divergence, l2_distance, symmetric_kl

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
    "privleak": None,  # closest to 0 is best: leaking as much as Retrain
    "canary_exposure": False,  # of forgotten users' canaries: 0.5 is nothing left
    "canary_retained": True,  # of retained users' canaries: they must stay learned
}


def classification(
    labels: np.ndarray, p_yes: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """AUC, accuracy and log loss of P(Yes) against 0/1 labels (sklearn). Accuracy is at 0.5,
    or at `threshold` (chosen on valid by `best_threshold`) with `acc_05` the one at 0.5."""
    labels, p_yes = np.asarray(labels), np.clip(np.asarray(p_yes, np.float64), 1e-7, 1 - 1e-7)
    auc = roc_auc_score(labels, p_yes) if len(set(labels.tolist())) == 2 else math.nan
    out = {
        "auc": float(auc),
        "acc": float(accuracy_score(labels, p_yes > (0.5 if threshold is None else threshold))),
        "logloss": float(log_loss(labels, p_yes, labels=[0, 1])),
    }
    if threshold is not None:
        out["acc_05"] = float(accuracy_score(labels, p_yes > 0.5))
    return out


def best_threshold(labels: np.ndarray, p_yes: np.ndarray) -> float:
    """The cut that maximises accuracy on these (valid) samples: midway between neighbouring
    scores, so that a model whose every score sits above 0.5 is not read as all "Yes"."""
    order = np.sort(np.unique(np.asarray(p_yes, np.float64)))
    cuts = np.concatenate([[order[0] - 1e-9], (order[:-1] + order[1:]) / 2, [order[-1]]])
    labels = np.asarray(labels)
    accuracy = [np.mean((p_yes > c) == labels) for c in cuts]
    return float(cuts[int(np.argmax(accuracy))])


def exposure(planted: np.ndarray, controls: np.ndarray) -> float:
    """AUC of the planted answer's log-odds, planted canaries (1) against controls (0):
    0.5 when the model answers planted canaries no better than ones it never saw."""
    y = np.concatenate([np.ones(len(planted)), np.zeros(len(controls))])
    return float(roc_auc_score(y, np.concatenate([planted, controls])))


def bootstrap_ci(values: np.ndarray, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` (samples resampled with replacement);
    for paired differences pass the per-sample differences."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (draws, len(values)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


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


def jsd_verdict(jsd: np.ndarray, original: np.ndarray, floor: np.ndarray, seed: int = 0) -> dict:
    """Per-sample JSDs to Retrain of a method, the original and a second Retrain (the noise
    floor), paired over the same forget samples: the method's 95% bootstrap interval, and
    whether it is surely below the original's and surely above the floor."""
    below = bootstrap_ci(jsd - original, seed=seed)[1] < 0
    above = bootstrap_ci(jsd - floor, seed=seed)[0] > 0
    return {
        "jsd_ci": list(bootstrap_ci(jsd, seed=seed)),
        "below_original": bool(below),
        "above_floor": bool(above),
    }
