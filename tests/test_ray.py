"""The bench's jobs on a real local Ray cluster give what the local pool gives."""

from __future__ import annotations

from dataclasses import replace

import pytest

from e2urec.bench import Bench, merge, preset, run_bench

VOLATILE = {"seconds", "peak_rss_mb", "cpu_seconds", "wall_seconds"}


def metrics(results: dict) -> dict:
    return {
        row: {k: v for k, v in values.items() if k not in VOLATILE}
        for row, values in results["methods"].items()
    }


@pytest.mark.slow  # two smoke benches and a Ray cluster: minutes
def test_the_smoke_bench_gives_the_same_metrics_through_ray_as_through_the_pool(tmp_path):
    ray = pytest.importorskip("ray", reason='the cluster extra: pip install -e ".[cluster]"')
    bench = Bench.from_dict(merge(preset("smoke"), {"workers": 2}))
    pool = run_bench(bench, tmp_path / "pool")
    cluster = run_bench(replace(bench, executor="ray"), tmp_path / "ray")
    assert not ray.is_initialized()  # the bench shut its cluster down
    here, there = metrics(pool), metrics(cluster)
    assert here.keys() == there.keys() and len(here) > 3
    for row in here:
        assert there[row] == pytest.approx(here[row], rel=1e-6, abs=1e-9), row


def test_an_address_needs_the_ray_executor():
    with pytest.raises(ValueError, match="needs executor ray"):
        Bench.from_dict(merge(preset("smoke"), {"address": "10.0.0.1:6379"}))
