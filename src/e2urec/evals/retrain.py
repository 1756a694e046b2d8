"""Against Retrain, the model that never saw the forgotten data: the distances of a model's
distributions on the forgotten samples to Retrain's (a block of rows at a time), forget quality,
and each row of a bench against Retrain with its intervals and verdicts against the original and
the noise floor (a second Retrain), and PrivLeak."""

from __future__ import annotations

import numpy as np
from scipy import stats

from e2urec.evals.intervals import jsd_verdict
from e2urec.evals.mia import privleak
from e2urec.maths import js_divergence, l2_distance, symmetric_kl

NEEDS_RETRAIN = ("jsd", "sym_kl", "l2", "jsd_yes_no", "forget_quality", "privleak")


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


def against_retrain(rows: dict, dists: dict, users: list[str], seed: int) -> None:
    """Each row's closeness to Retrain's forget scores, one row's distributions at a time."""
    ref = dists.get("retrain")
    per_sample = {}
    for name, row in rows.items():
        if ref is None or name not in dists:
            row.update(dict.fromkeys(NEEDS_RETRAIN))
            continue
        f = dists[name]
        d = distances(f["dist"], ref["dist"])
        row.update(closeness(f["dist"], ref["dist"], f["p_yes"], ref["p_yes"], per_sample=d))
        row["forget_quality"] = forget_quality(f["log_odds"], ref["log_odds"])
        row["privleak"] = privleak(row["mia_auc"], rows["retrain"]["mia_auc"])
        per_sample[name] = d["jsd"]
    if {"original", "retrain_b"} <= per_sample.keys():
        original, floor = per_sample["original"], per_sample["retrain_b"]
        for name, jsd in per_sample.items():
            rows[name].update(jsd_verdict(jsd, original, floor, users, seed))
