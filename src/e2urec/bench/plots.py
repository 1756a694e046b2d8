"""Figures made from results.json: utility against forgetting, time, and successive requests."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from e2urec.bench.report import cell

# Figure without pyplot renders with the Agg backend and leaves the caller's backend alone.


def _colors(names) -> dict[str, str]:
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(names) > len(cycle):  # the bench has 11 rows: no two may share a colour
        cycle = matplotlib.colormaps["tab20"].colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _std(results: dict, name: str, path: tuple[str, ...]):
    return cell((results.get("std") or {}).get("methods", {}).get(name), path)


def _jsd_error(results: dict, name: str):
    """The row's 95% interval (over users, or with seeds over the seeds) as distances below and
    above; the std over seeds where it has none."""
    row = results["methods"][name]
    if not row.get("jsd_ci"):
        return _std(results, name, ("jsd",))
    low, high = row["jsd_ci"]
    return [[max(0.0, row["jsd"] - low)], [max(0.0, high - row["jsd"])]]


def plot_results(results: dict, path: str | Path) -> Path:
    """Left: test AUC against JSD to Retrain on the forget set, with the noise floor.
    Middle: canaries of forgotten users against canaries of users who stay. Right: seconds."""
    rows = results["methods"]
    colors = _colors(rows)
    fig = Figure(figsize=(16, 4.4), layout="constrained")
    left, middle, right = fig.subplots(1, 3)
    floor = (rows.get("retrain_b") or {}).get("jsd")
    if floor is not None:
        left.axvline(floor, ls="--", color="grey", lw=1)
        left.annotate("noise floor", (floor, 0.02), xycoords=("data", "axes fraction"))
    for name, row in rows.items():
        x, y = row.get("jsd"), cell(row, ("test", "auc"))
        if x is None or y is None:
            continue
        left.errorbar(
            x,
            y,
            xerr=_jsd_error(results, name),
            yerr=_std(results, name, ("test", "auc")),
            fmt="o",
            ms=8,
            capsize=3,
            color=colors[name],
            label=name,
        )
        left.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
        if row.get("jsd_yes_no") is not None:  # how much of the distance is the decision
            left.plot(row["jsd_yes_no"], y, marker="x", ms=8, color=colors[name], ls="none")
    if all(row.get("jsd") is None for row in rows.values()):
        left.text(
            0.5, 0.5, "no Retrain run: JSD unavailable", ha="center", transform=left.transAxes
        )
    left.set_xlabel("JSD to Retrain on the forget set (o: vocabulary, x: Yes/No; lower: closer)")
    left.set_ylabel("test AUC (higher: more useful)")
    left.set_title("Utility against forgetting")
    left.grid(alpha=0.3)
    left.margins(0.3)
    low, high = left.get_xlim()
    left.set_xlim(max(low, -0.05 * high), high)  # JSD is never negative
    _canaries(middle, results, colors)

    # Dots, not bars: a bar's length on a log axis depends on where the axis happens to start.
    names = [n for n in rows if rows[n].get("seconds")]  # the references cost nothing
    for i, name in enumerate(names):
        seconds = rows[name]["seconds"]
        right.errorbar(
            seconds,
            i,
            xerr=_std(results, name, ("seconds",)),
            fmt="o",
            ms=8,
            capsize=3,
            color=colors[name],
        )
        right.annotate(f"{seconds:.1f} s", (seconds, i), textcoords="offset points", xytext=(8, 6))
    right.set_yticks(
        range(len(names)), [f"{n} (training)" if n == "original" else n for n in names]
    )
    right.set_xscale("log")
    right.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    right.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_ylim(len(names) - 0.5, -0.5)
    right.margins(x=0.3)
    right.set_xlabel("wall seconds (log scale)")
    right.set_title("Unlearning time")
    right.grid(axis="x", alpha=0.3, which="both")
    if results.get("seeds"):
        fig.suptitle(f"mean ± std over seeds {', '.join(map(str, results['seeds']))}")
    return _save(fig, path)


def _canaries(ax, results: dict, colors: dict) -> None:
    rows = results["methods"]
    for name, row in rows.items():
        x, y = row.get("canary_exposure"), row.get("canary_retained")
        if x is None or y is None:
            continue
        ax.errorbar(
            x,
            y,
            xerr=_std(results, name, ("canary_exposure",)),
            yerr=_std(results, name, ("canary_retained",)),
            fmt="o",
            ms=8,
            capsize=3,
            color=colors[name],
        )
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
    ax.axvline(0.5, ls="--", color="grey", lw=1)
    ax.axhline(0.5, ls="--", color="grey", lw=1)
    ax.set_xlabel("exposure of forgotten users' canaries (0.5: none left)")
    ax.set_ylabel("exposure of retained users' canaries (must stay high)")
    ax.set_title("Canaries")
    ax.grid(alpha=0.3)
    ax.margins(0.2)


SEQUENTIAL_PANELS = [
    (("test", "auc"), "test AUC"),
    (("forget", "auc"), "forget AUC (all forgotten so far)"),
    (("jsd",), "JSD to Retrain (all forgotten so far)"),
    (("mia_auc",), "MIA AUC (forgotten vs unseen)"),
]


def plot_sequential(results: dict, path: str | Path) -> Path:
    """One panel per metric, one line per method, over successive deletion requests."""
    seq = results["sequential"]
    stds = ((results.get("std") or {}).get("sequential") or {}).get("methods", {})
    colors = _colors(seq["methods"])
    fig = Figure(figsize=(16, 3.8), layout="constrained")
    axes = fig.subplots(1, len(SEQUENTIAL_PANELS))
    for ax, (key, title) in zip(axes, SEQUENTIAL_PANELS):
        for i, (name, steps) in enumerate(seq["methods"].items()):
            dodge = (i - (len(colors) - 1) / 2) * 0.03  # keep error bars apart
            x = [r["step"] + dodge for r in steps]
            y = [cell(r, key) for r in steps]
            if any(v is None for v in y):
                continue
            sd = stds.get(name)
            err = [cell(s, key) for s in sd] if sd else None
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colors[name], label=name)
        ax.set_title(title)
        ax.set_xlabel("request")
        ax.set_xticks(range(1, seq["steps"] + 1))
        ax.grid(alpha=0.3)
    axes[0].legend()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
