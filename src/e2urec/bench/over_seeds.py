"""Results over seeds: mean and spread leaf by leaf, t-intervals, and rows' differences taken
within each seed."""

from __future__ import annotations

import numpy as np
from scipy import stats

from e2urec.bench.report import cell


def aggregate(trees: list):
    """Mean and sample standard deviation, leaf by leaf, of equally shaped results.

    Numbers are averaged; anything else (names, None) is kept from the first tree in the
    mean and left out of the std.
    """
    first = trees[0]
    if isinstance(first, dict):
        pairs = {k: aggregate([t.get(k) for t in trees]) for k in first}
        return {k: m for k, (m, _) in pairs.items()}, {
            k: sd for k, (_, sd) in pairs.items() if sd is not None
        }
    if isinstance(first, list) and all(isinstance(t, list) and len(t) == len(first) for t in trees):
        pairs = [aggregate(list(col)) for col in zip(*trees)]
        stds = [sd for _, sd in pairs]
        return [m for m, _ in pairs], (stds if any(sd is not None for sd in stds) else None)
    if all(isinstance(t, bool) for t in trees):  # a verdict: the share of seeds it held in
        return float(np.mean(trees)), None
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in trees):
        values = np.array(trees, dtype=np.float64)
        if all(isinstance(t, int) for t in trees) and len(set(trees)) == 1:
            return first, 0.0
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return float(values.mean()), std
    return first, None


def ci95(std, n: int):
    """Half-widths of the 95% t-interval of the mean over `n` seeds, leaf by leaf of `std`."""
    if isinstance(std, dict):
        return {k: ci95(v, n) for k, v in std.items()}
    if isinstance(std, list):
        return [ci95(v, n) for v in std]
    if isinstance(std, (int, float)) and n > 1:
        return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return None


# (metric, reference row): differences taken within each seed. A seed moves the data, the
# forgotten users and the initialisation of every row alike, so the spread of a row over seeds
# (up to 0.15 test AUC) mostly cancels in its difference to another row of the same seed.
PAIRED = (
    (("jsd",), "original"),
    (("jsd",), "retrain_b"),
    (("canary_exposure",), "original"),
    (("canary_retained",), "original"),  # forgetting that erases retained users' too is not
    (("test", "auc"), "original"),
)


def paired_over_seeds(seeds: list[dict]) -> dict:
    """Per row, its difference to each reference row seed by seed: mean and 95% t-interval
    over the seeds (`{row: {"jsd - original": {"mean", "low", "high", "n"}}}`)."""
    out: dict = {}
    for row in seeds[0]:
        for path, ref in PAIRED:
            if row == ref:
                continue
            diffs = [_number(s.get(row), path) - _number(s.get(ref), path) for s in seeds]
            diffs = [d for d in diffs if d == d]  # NaN: a seed lacks the row or the metric
            if len(diffs) < 2:
                continue
            mean, half = float(np.mean(diffs)), ci95(float(np.std(diffs, ddof=1)), len(diffs))
            out.setdefault(row, {})[f"{'.'.join(path)} - {ref}"] = {
                "mean": mean,
                "low": mean - half,
                "high": mean + half,
                "n": len(diffs),
            }
    return out


def _number(row: dict | None, path: tuple[str, ...]) -> float:
    value = cell(row, path)
    return float(value) if isinstance(value, (int, float)) else float("nan")


# Metrics whose single-run interval is stored beside them as `<name>_ci`, and their range.
INTERVALS = {
    ("jsd",): (0.0, 1.0),
    ("test", "auc"): (0.0, 1.0),
    ("canary_exposure",): (0.0, 1.0),
    ("canary_retained",): (0.0, 1.0),
}


def over_seeds(results: dict, n: int) -> None:
    """With seeds, each row's intervals become the 95% t-intervals of its per-seed values,
    clipped to the metric's range (the mean of each seed's interval endpoints is an interval
    of nothing), and its verdicts come from the paired differences over seeds: below the
    original when the interval of JSD - original's lies below 0, above the floor when that of
    JSD - retrain_b's lies above 0."""
    stds = results["std"]["methods"]
    for name, row in results["methods"].items():
        for path, (low, high) in INTERVALS.items():
            ci_path = (*path[:-1], path[-1] + "_ci")
            mean, half = cell(row, path), ci95(cell(stds.get(name), path), n)
            if not isinstance(mean, float) or half is None:
                continue
            parent = cell(row, ci_path[:-1])  # the row itself for a top-level metric
            parent[ci_path[-1]] = [max(low, mean - half), min(high, mean + half)]
        if "below_original" in row:
            paired = results["paired"].get(name, {})
            below, above = paired.get("jsd - original"), paired.get("jsd - retrain_b")
            row["below_original"] = None if below is None else bool(below["high"] < 0)
            row["above_floor"] = None if above is None else bool(above["low"] > 0)
