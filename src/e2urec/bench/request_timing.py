"""Deletion requests as a service sees them: single-user requests one after another, timed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from e2urec.api import forget


def time_requests(
    data,
    original,
    users: list[str],
    out,
    retrain_seconds: float,
    method: str = "e2urec",
    options: dict | None = None,
    n: int = 5,
) -> dict:
    """`n` requests, each forgetting one of `users` from the model the previous one made
    (the first from `original`); p50 and p95 of their latency (reading the data to saving the
    model, evaluation not included) beside one Retrain's seconds, measured by the caller."""
    if not 1 <= n <= len(users):
        raise ValueError(f"cannot time {n} single-user requests with {len(users)} user(s)")
    model, seconds = str(original), []
    for i, user in enumerate(users[:n], 1):
        report = forget(
            data, model, Path(out) / f"request-{i}", method, (user,), (), options, evaluate=False
        )
        seconds.append(report["latency"]["request_seconds"])
        model = report["model"]
    return {
        "method": method,
        "n": n,
        "p50_seconds": float(np.percentile(seconds, 50)),
        "p95_seconds": float(np.percentile(seconds, 95)),
        "retrain_seconds": float(retrain_seconds),
        "seconds": seconds,
    }
