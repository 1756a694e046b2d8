"""Results as files: JSON (with versions and git commit), CSV, Markdown, and a readable table."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

COLUMNS = [
    ("test AUC", ("test", "auc")),
    ("test AUC 95% CI", ("test", "auc_ci")),
    ("test ACC", ("test", "acc")),
    ("ACC@0.5", ("test", "acc_05")),
    ("test LogLoss", ("test", "logloss")),
    ("forget AUC", ("forget", "auc")),
    ("forget LogLoss", ("forget", "logloss")),
    ("JSD", ("jsd",)),
    ("JSD 95% CI", ("jsd_ci",)),
    ("< orig", ("below_original",)),
    ("> floor", ("above_floor",)),
    ("sym-KL", ("sym_kl",)),
    ("L2", ("l2",)),
    ("JSD Yes/No", ("jsd_yes_no",)),
    ("forget quality", ("forget_quality",)),
    ("canary exp.", ("canary_exposure",)),
    ("canary kept", ("canary_retained",)),
    ("MIA AUC", ("mia_auc",)),
    ("PrivLeak", ("privleak",)),
    ("epochs", ("epochs_run",)),
    ("seconds", ("seconds",)),
    ("trainable params", ("trainable_params",)),
    ("peak RSS MB", ("peak_rss_mb",)),
]
# Per sequential step: what was forgotten so far, and how each method stands after it.
STEP_COLUMNS = [
    ("step", ("step",)),
    ("users", ("users",)),
    ("forgotten", ("forgotten_samples",)),
    ("test AUC", ("test", "auc")),
    ("forget AUC", ("forget", "auc")),
    ("JSD", ("jsd",)),
    ("JSD Yes/No", ("jsd_yes_no",)),
    ("MIA AUC", ("mia_auc",)),
    ("seconds", ("seconds",)),
]
DECIMALS = {
    "seconds": 1,
    "peak RSS MB": 1,
    "trainable params": 0,
    "step": 0,
    "users": 0,
    "forgotten": 0,
    "epochs": 0,
    "< orig": 2,
    "> floor": 2,
}
PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "scikit-learn", "e2urec")


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def cell(row: dict, path: tuple[str, ...]):
    value = row
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def fmt(value, decimals: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "[" + ",".join(fmt(v, decimals) for v in value) + "]"  # no space: one cell
    if not isinstance(value, (int, float)):
        return str(value)
    if decimals == 0 and math.isfinite(value):
        return str(round(value))
    return f"{value:.{decimals}f}" if abs(value) < 100 else f"{value:.1f}"


def fmt_cell(row: dict, std: dict | None, title: str, path: tuple[str, ...]) -> str:
    """`mean` or, when a std is known, `mean ± std`."""
    decimals = DECIMALS.get(title, 4)
    text = fmt(cell(row, path), decimals)
    spread = cell(std, path) if std else None
    if isinstance(spread, (int, float)) and text != "-" and decimals:
        text += f" ± {fmt(spread, decimals)}"
    return text


def table_rows(results: dict, columns=COLUMNS) -> list[list[str]]:
    stds = (results.get("std") or {}).get("methods", {})
    return [
        [name] + [fmt_cell(row, stds.get(name), t, path) for t, path in columns]
        for name, row in results["methods"].items()
    ]


def step_rows(results: dict) -> list[list[str]]:
    seq = results.get("sequential") or {}
    stds = ((results.get("std") or {}).get("sequential") or {}).get("methods", {})
    rows = []
    for name, steps in seq.get("methods", {}).items():
        spread = stds.get(name) or [None] * len(steps)
        for row, sd in zip(steps, spread):
            rows.append([name] + [fmt_cell(row, sd, t, path) for t, path in STEP_COLUMNS])
    return rows


def render(header: list[str], rows: list[list[str]]) -> str:
    rows = [header] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _header(columns) -> list[str]:
    return ["method"] + [c for c, _ in columns]


def text_table(results: dict) -> str:
    text = render(_header(COLUMNS), table_rows(results))
    if results.get("seeds"):
        text = f"mean ± std over seeds {', '.join(map(str, results['seeds']))}\n" + text
    text += "\n" + noise_note(results)
    if results.get("paired"):
        text += "\n\n" + render(*paired_rows(results)) + "\n" + PAIRED_NOTE
    return text


def noise_note(results: dict) -> str:
    """What in the table is noise, said under it."""
    rows = results["methods"]
    lines = []
    floor = cell(rows.get("retrain_b") or {}, ("jsd",))
    if floor is not None:
        lines.append(
            f"Noise floor: retrain_b (Retrain, another seed) is at JSD {fmt(floor)} from Retrain. "
            + (SEEDS_NOTE if results.get("seeds") else RUN_NOTE)
        )
    if "history_mean" in rows:
        lines.append(
            "history_mean: no training, P(Yes) from the mean rating shown in the prompt: "
            "what any model must beat. test ACC uses the threshold best on valid."
        )
    e2urec = rows.get("e2urec") or {}
    if e2urec.get("aug_forget_loss") is not None:
        lines.append(
            f"E2URec's augmented model: forget-set loss {fmt(e2urec['aug_forget_loss'])} against "
            f"the original's {fmt(e2urec['orig_forget_loss'])} (lower: it learned the forget data "
            "the forgetting teacher pushes away from)."
        )
    if results.get("seeds"):
        lines.append("± is the std over seeds; results.json has 95% t-intervals (ci95).")
    return "\n".join(lines)


RUN_NOTE = (
    "JSD 95% CI: bootstrap over the reported forgotten users (a user's samples move together); "
    "'< orig' / '> floor': that interval of the per-sample difference to the original / to "
    "retrain_b excludes 0. One run: the seed's spread is not in these; see the study."
)
SEEDS_NOTE = (
    "JSD 95% CI: the 95% t-interval over seeds; '< orig' / '> floor': the t-interval over "
    "seeds of the paired difference to the original / to retrain_b excludes 0."
)
PAIRED_NOTE = (
    "Differences to a reference row taken within each seed, then their mean over seeds with "
    "a 95% t-interval; '*': the interval excludes 0 (the difference is beyond the seed spread)."
)


def paired_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    paired = results.get("paired") or {}
    # Columns in the order bench takes them: the fullest row first (the original has fewer).
    rows_first = sorted(paired.values(), key=len, reverse=True)
    keys = list(dict.fromkeys(k for row in rows_first for k in row))
    rows = []
    for name, diffs in paired.items():
        cells = []
        for key in keys:
            d = diffs.get(key)
            star = "*" if d and (d["low"] > 0 or d["high"] < 0) else ""
            cells.append(f"{d['mean']:+.4f} [{d['low']:+.4f},{d['high']:+.4f}]{star}" if d else "-")
        rows.append([name, *cells])
    titles = {".".join(path): title for title, path in COLUMNS}  # "test.auc" -> "test AUC"
    header = [f"{titles[metric]} - {ref}" for metric, ref in (k.split(" - ") for k in keys)]
    return ["method", *header], rows


def sequential_table(results: dict) -> str:
    seq = results.get("sequential")
    if not seq:
        return ""
    title = f"{seq['steps']} successive deletion requests (forget set: everything forgotten so far)"
    return title + "\n" + render(_header(STEP_COLUMNS), step_rows(results))


def markdown_table(results: dict) -> str:
    text = markdown(_header(COLUMNS), table_rows(results)) + "\n" + noise_note(results) + "\n"
    if results.get("paired"):
        text += "\n## Paired over seeds\n\n" + markdown(*paired_rows(results))
        text += "\n" + PAIRED_NOTE + "\n"
    if results.get("sequential"):
        text += "\n## Successive deletion requests\n\n"
        text += markdown(_header(STEP_COLUMNS), step_rows(results))
    return text


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_results(results: dict, out: str | Path) -> None:
    out = Path(out)
    results.setdefault("versions", versions())
    results.setdefault("git", git_commit())
    _atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
    _atomic_write(out / "results.csv", csv_table(results))
    _atomic_write(out / "results.md", markdown_table(results))


def csv_table(results: dict) -> str:
    """One row per method; with seeds, a `<column> std` after each numeric column."""
    stds = (results.get("std") or {}).get("methods")
    header = ["method"]
    for title, _ in COLUMNS:
        header += [title, f"{title} std"] if stds else [title]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for name, row in results["methods"].items():
        values = [name]
        for _, path in COLUMNS:
            values.append(cell(row, path))
            if stds:
                values.append(cell(stds.get(name), path))
        writer.writerow(values)
    return buf.getvalue()
