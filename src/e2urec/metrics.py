"""Metrics: utility of a recommender, and how close its outputs are to the retrained model's."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
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
    labels: np.ndarray,
    p_yes: np.ndarray,
    threshold: float | None = None,
    log_odds: np.ndarray | None = None,
) -> dict[str, float]:
    """AUC, accuracy and log loss of P(Yes) against 0/1 labels (sklearn). The AUC ranks by
    `log_odds` (the Yes-No logit difference) when given: confident models' P(Yes) tie at 1.0.
    Accuracy is at 0.5, or at `threshold` (chosen on valid by `best_threshold`) with `acc_05`
    the one at 0.5."""
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


def user_draws(users, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """[draws, N] weights of a cluster bootstrap: users drawn with replacement, each sample
    weighted by how often its user was drawn. A user's samples are not independent (same
    history, same model errors), so resampling samples alone gives intervals that are too
    narrow."""
    _, user_of = np.unique(np.asarray(users, dtype=str), return_inverse=True)
    n_users = int(user_of.max()) + 1 if len(user_of) else 0
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_users, np.full(n_users, 1 / n_users), size=draws)
    return counts[:, user_of].astype(np.float64)


def bootstrap_ci(values: np.ndarray, users, draws: int = 1000, seed: int = 0):
    """95% percentile interval of the mean of `values` under a cluster bootstrap over `users`
    (one user id per value); for paired differences pass the per-sample differences. NaN with
    fewer than two users: one user's samples say nothing of the spread between users."""
    values = np.asarray(values, np.float64)
    if len(set(np.asarray(users, dtype=str).tolist())) < 2:
        return math.nan, math.nan
    weights = user_draws(users, draws, seed)
    means = weights @ values / weights.sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def auc_ci(labels, rank, users, draws: int = 1000, seed: int = 0) -> list[float] | None:
    """95% percentile interval of the AUC under a cluster bootstrap over `users`; None when
    either class or a second user is missing."""
    if len(set(np.asarray(labels).tolist())) < 2 or len(set(np.asarray(users, str).tolist())) < 2:
        return None
    aucs = [auc(labels, rank, w) for w in user_draws(users, draws, seed)]
    aucs = np.array([a for a in aucs if a == a])  # a draw may miss one class
    return [float(v) for v in np.percentile(aucs, [2.5, 97.5])]


def forget_quality(log_odds: np.ndarray, ref_log_odds: np.ndarray) -> float:
    """open-unlearning's forget quality: the KS test's p-value between a model's and Retrain's
    per-sample Yes/No log-odds (high: indistinguishable from Retrain)."""
    return float(stats.ks_2samp(log_odds, ref_log_odds).pvalue)


CHUNK = 256  # rows of two [N, V] distributions turned into float64 at a time


def distances(dist: np.ndarray, ref_dist: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample jsd, sym_kl and l2 between two [N, V] distributions, a chunk of rows at a
    time: memory-mapped inputs at the paper's scale (6,500 x 32,128) are never read whole, and
    only one chunk is ever in float64."""
    parts: dict[str, list] = {"jsd": [], "sym_kl": [], "l2": []}
    for start in range(0, len(dist), CHUNK):
        p, q = dist[start : start + CHUNK], ref_dist[start : start + CHUNK]
        parts["jsd"].append(js_divergence(p, q))
        parts["sym_kl"].append(symmetric_kl(p, q))
        parts["l2"].append(l2_distance(p, q))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def closeness(dist, ref_dist, p_yes, ref_p_yes, per_sample: dict | None = None) -> dict:
    """Mean distances to the reference (Retrain) over samples, at the answer position.

    jsd: Jensen-Shannon divergence (base 2) over the vocabulary; sym_kl: what the paper's code
    reports as "JSD"; l2: between the probability vectors; jsd_yes_no: JSD over (Yes, No).
    `per_sample`: `distances(dist, ref_dist)` when the caller has it already.
    """
    per_sample = per_sample or distances(dist, ref_dist)
    pair = np.stack([p_yes, 1 - p_yes], axis=1)
    ref_pair = np.stack([ref_p_yes, 1 - ref_p_yes], axis=1)
    return {
        **{k: float(v.mean()) for k, v in per_sample.items()},
        "jsd_yes_no": float(js_divergence(pair, ref_pair).mean()),
    }


def jsd_verdict(jsd, original, floor, users, seed: int = 0) -> dict:
    """Per-sample JSDs to Retrain of a method, the original and a second Retrain (the noise
    floor), paired over the same forget samples of `users`: the method's 95% cluster-bootstrap
    interval, and whether it is surely below the original's and surely above the floor. The
    seed's spread is not in these: with seeds the bench takes them over the seeds instead."""
    below = bootstrap_ci(jsd - original, users, seed=seed)[1] < 0
    above = bootstrap_ci(jsd - floor, users, seed=seed)[0] > 0
    interval = bootstrap_ci(jsd, users, seed=seed)
    return {
        "jsd_ci": None if math.isnan(interval[0]) else list(interval),
        "below_original": bool(below),
        "above_floor": bool(above),
    }
