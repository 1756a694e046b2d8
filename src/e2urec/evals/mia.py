"""Membership inference: can an attacker tell that forgotten samples were once trained on?

An attack classifier (logistic regression) learns, from a model's per-sample outputs, to tell
train samples it still holds (retain: members) from held-out samples of the same period and
users that no model trained on (non-members), on balanced sets. Its AUC on forgotten samples
against other held-out samples it never saw is the score. The attack is fitted and scored
within each answer class ("Yes." / "No.") and the per-class AUCs are averaged, weighted by the
forgotten samples in each class: an attacker who only knows the label scores exactly 0.5.
Forgotten users are users no held-out sample comes from, so even Retrain may sit off 0.5:
compare methods with Retrain (privleak), not with 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FEATURES = ("loss", "log_odds_true", "log_entropy")


def features(log_odds: np.ndarray, loss: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, 3]: loss of the true answer, log-odds of the true answer against the other, and the
    log of the Yes/No pair's entropy (nats), all in float64 from the logit difference: P(true)
    and the entropy themselves saturate (1.0 and 0.0) for confident models and tie."""
    log_odds = np.asarray(log_odds, np.float64)
    true = np.where(np.asarray(labels) == 1, log_odds, -log_odds)
    x = np.minimum(np.abs(log_odds), 700.0)  # beyond, e^-x is 0 in float64
    # H = log(1 + e^-x) + x e^-x / (1 + e^-x), summed in log space: stable for large x.
    soft = np.log1p(np.exp(-x))
    log_entropy = np.logaddexp(np.log(soft), np.log(np.maximum(x, 1e-300)) - x - soft)
    return np.stack([np.asarray(loss, np.float64), true, log_entropy], axis=1)


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into the attacker's half and the held-out half."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def balanced(members: np.ndarray, nonmembers: np.ndarray, seed: int):
    """As many rows of each class (the smaller count), chosen at random: X, y."""
    n = min(len(members), len(nonmembers))
    if n < 2:
        raise ValueError(f"need at least 2 members and 2 non-members, got {n}")
    rng = np.random.default_rng(seed)
    m = members[rng.choice(len(members), n, replace=False)]
    o = nonmembers[rng.choice(len(nonmembers), n, replace=False)]
    return np.concatenate([m, o]), np.concatenate([np.ones(n), np.zeros(n)])


Labelled = tuple[np.ndarray, np.ndarray]  # features [N, 3], labels [N]


def fit_attack(members: np.ndarray, nonmembers: np.ndarray, seed: int = 0):
    """A logistic-regression attack on standardised features; predict_proba[:, 1] = member."""
    x, y = balanced(members, nonmembers, seed)
    attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return attack.fit(x, y)


def attack_auc(attack, forgotten: np.ndarray, unseen: np.ndarray) -> float:
    """AUC of the attack's member score: forgotten samples (1) against unseen ones (0)."""
    x = np.concatenate([forgotten, unseen])
    y = np.concatenate([np.ones(len(forgotten)), np.zeros(len(unseen))])
    return float(roc_auc_score(y, attack.predict_proba(x)[:, 1]))


def mia_auc(
    members: Labelled, nonmembers: Labelled, forgotten: Labelled, unseen: Labelled, seed: int = 0
) -> float:
    """One attack per answer class, trained on members vs non-members and scored on forgotten
    vs unseen; the AUCs averaged with weights = forgotten samples per class (NaN if no class
    has two samples of each kind on both sides)."""
    aucs, weights = [], []
    for label in (0, 1):
        m, o, f, u = (x[y == label] for x, y in (members, nonmembers, forgotten, unseen))
        if min(len(m), len(o)) < 2 or not len(f) or not len(u):
            continue
        aucs.append(attack_auc(fit_attack(m, o, seed), f, u))
        weights.append(len(f))
    return float(np.average(aucs, weights=weights)) if aucs else float("nan")


def privleak(auc: float, retrain_auc: float) -> float:
    """MUSE's PrivLeak: the attack's AUC relative to Retrain's (0: leaks as much as Retrain)."""
    return (auc - retrain_auc) / retrain_auc if retrain_auc else float("nan")


@dataclass
class Plan:
    """Which samples the attack uses: indices into retain (members) and into the held-out set
    (its two halves: the attack's non-members, and the unseen samples it is scored against)."""

    members: np.ndarray
    nonmembers: np.ndarray
    unseen: np.ndarray

    @classmethod
    def make(cls, n_retain: int, n_heldout: int, seed: int = 0) -> Plan:
        nonmembers, unseen = halves(n_heldout, seed)
        rng = np.random.default_rng(seed + 1)
        # Training is balanced, so only as many members as non-members need scoring.
        members = np.sort(rng.choice(n_retain, min(n_retain, len(nonmembers)), replace=False))
        return cls(members, nonmembers, unseen)


def sample_features(samples, scores: dict) -> Labelled:
    """Features and labels of `samples` from `e2urec.model.score`'s output on them."""
    labels = np.array([s.label for s in samples])
    return features(scores["log_odds"], scores["loss"], labels), labels


def subset(data: Labelled, idx) -> Labelled:
    return data[0][idx], data[1][idx]
