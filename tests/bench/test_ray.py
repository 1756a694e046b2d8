"""The bench's jobs on a real local Ray cluster give what the local pool gives."""

from __future__ import annotations

from dataclasses import replace

import pytest

from e2urec.bench import Bench, merge, preset, run_bench

VOLATILE = {"seconds", "peak_rss_mb", "cpu_seconds", "wall_seconds"}


def leaves(value, path=()) -> dict:
    """{path: number} of every leaf of nested dicts and lists (pytest.approx takes flat ones)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in leaves(item, (*path, key)).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in leaves(item, (*path, i)).items()}
    return {path: value}


def metrics(results: dict) -> dict:
    return {
        row: leaves({k: v for k, v in values.items() if k not in VOLATILE})
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
        assert there[row].keys() == here[row].keys(), row
        for key, value in here[row].items():
            if isinstance(value, float):
                assert there[row][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (row, key)
            else:  # counts, flags, None
                assert there[row][key] == value, (row, key)


def test_an_address_needs_the_ray_executor():
    with pytest.raises(ValueError, match="needs executor ray"):
        Bench.from_dict(merge(preset("smoke"), {"address": "10.0.0.1:6379"}))
