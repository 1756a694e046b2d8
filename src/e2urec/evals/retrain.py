"""Each row of a bench against Retrain, the model that never saw the forgotten data: closeness
on the forgotten samples (streamed from each row's distributions on disk), intervals and
verdicts against the original and the noise floor (a second Retrain), forget quality, PrivLeak."""

from __future__ import annotations

from e2urec.evals.mia import privleak
from e2urec.metrics import closeness, distances, forget_quality, jsd_verdict

NEEDS_RETRAIN = ("jsd", "sym_kl", "l2", "jsd_yes_no", "forget_quality", "privleak")


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
