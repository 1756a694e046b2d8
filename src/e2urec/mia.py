"""Membership inference: can an attacker tell that forgotten samples were once trained on?

An attack classifier (logistic regression) learns, from a model's per-sample outputs, to tell
train samples it still holds (retain: members) from test samples (non-members), on balanced
sets. Its AUC on forgotten samples against held-out test samples it never saw is the score:
about 0.5 means the forgotten samples look unseen. Test samples come later in time than train
samples, so even Retrain may sit a little off 0.5: compare methods with Retrain, not with 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

EPS = 1e-12
FEATURES = ("loss", "p_true", "entropy")


def features(p_yes: np.ndarray, loss: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, 3]: loss of the true answer, P(true answer), entropy (bits) of the Yes/No pair."""
    p_yes = np.clip(np.asarray(p_yes, np.float64), EPS, 1 - EPS)
    labels = np.asarray(labels)
    p_true = np.where(labels == 1, p_yes, 1 - p_yes)
    entropy = -(p_yes * np.log2(p_yes) + (1 - p_yes) * np.log2(1 - p_yes))
    return np.stack([np.asarray(loss, np.float64), p_true, entropy], axis=1)


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


def mia_auc(members, nonmembers, forgotten, unseen, seed: int = 0) -> float:
    """Train the attack on members vs non-members; its AUC on forgotten vs unseen."""
    return attack_auc(fit_attack(members, nonmembers, seed), forgotten, unseen)


@dataclass
class Plan:
    """Which samples the attack uses: indices into retain (members) and test (the two halves)."""

    members: np.ndarray
    nonmembers: np.ndarray
    unseen: np.ndarray

    @classmethod
    def make(cls, n_retain: int, n_test: int, seed: int = 0) -> Plan:
        nonmembers, unseen = halves(n_test, seed)
        rng = np.random.default_rng(seed + 1)
        # Training is balanced, so only as many members as non-members need scoring.
        members = np.sort(rng.choice(n_retain, min(n_retain, len(nonmembers)), replace=False))
        return cls(members, nonmembers, unseen)


def sample_features(samples, scores: dict) -> np.ndarray:
    """Features of `samples` from `e2urec.model.score`'s output on them."""
    labels = np.array([s.label for s in samples])
    return features(scores["p_yes"], scores["loss"], labels)
