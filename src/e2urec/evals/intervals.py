"""Intervals over users: a user's samples share a history and the model's errors, so they are
resampled together (a cluster bootstrap); and the JSD verdicts built on those intervals."""

from __future__ import annotations

import math

import numpy as np

from e2urec.metrics import auc


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
