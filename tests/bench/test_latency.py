"""Single-user deletion requests: their latency, and work in proportion to the request."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

import e2urec.evals.scorecard
from e2urec.api import forget
from e2urec.bench.request_timing import time_requests

FAST = {"epochs": 1, "aug_epochs": 1, "lora_rank": 2, "lora_alpha": 4, "batch_size": 16}


def _few_sample_users(splits, n):
    counts = Counter(s.user for s in splits["train"])
    return [u for u, _ in counts.most_common()][-n:]


def test_requests_are_timed_one_after_another(data_dir, splits, trained, tmp_path):
    users = _few_sample_users(splits, 2)
    got = time_requests(data_dir, trained["original"], users, tmp_path, 100.0, options=FAST, n=2)
    assert set(got) >= {"method", "n", "p50_seconds", "p95_seconds", "retrain_seconds"}
    assert got["n"] == 2 and got["retrain_seconds"] == 100.0
    assert 0 < got["p50_seconds"] <= got["p95_seconds"] <= max(got["seconds"])
    second = json.loads((tmp_path / "request-2" / "forget_report.json").read_text())
    assert second["requests"] == [{"users": [u], "interactions": []} for u in users]
    assert "before" not in second  # timing runs skip the comparison
    with pytest.raises(ValueError, match="cannot time 3"):
        time_requests(data_dir, trained["original"], users, tmp_path / "x", 1.0, n=3)


def test_a_request_scores_the_whole_test_set_once_per_model(
    data_dir, splits, trained, tmp_path, monkeypatch
):
    scored = []
    inner = e2urec.evals.scorecard.score
    monkeypatch.setattr(
        e2urec.evals.scorecard,
        "score",
        lambda rec, s, *a, **k: scored.append(len(s)) or inner(rec, s, *a, **k),
    )
    first, second = _few_sample_users(splits, 2)
    report = forget(data_dir, trained["original"], tmp_path / "a", users=(first,), options=FAST)
    assert report["latency"]["request_seconds"] >= report["latency"]["unlearning_seconds"] > 0
    assert len(splits["test"]) in scored
    scored.clear()
    again = forget(data_dir, trained["original"], tmp_path / "b", users=(second,), options=FAST)
    # The original's standing is reused; only the new model's is computed.
    assert scored.count(len(splits["test"])) == 1
    assert again["before"]["test"] == report["before"]["test"]
    assert Path(trained["original"], "standing.json").exists()
