"""Results as files: JSON (with versions and git commit), CSV, Markdown, and a readable table."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

COLUMNS = [
    ("test AUC", ("test", "auc")),
    ("test ACC", ("test", "acc")),
    ("test LogLoss", ("test", "logloss")),
    ("forget AUC", ("forget", "auc")),
    ("forget LogLoss", ("forget", "logloss")),
    ("JSD", ("jsd",)),
    ("sym-KL", ("sym_kl",)),
    ("L2", ("l2",)),
    ("JSD Yes/No", ("jsd_yes_no",)),
    ("seconds", ("seconds",)),
    ("trainable params", ("trainable_params",)),
    ("peak RSS MB", ("peak_rss_mb",)),
]
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


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def table_rows(results: dict) -> list[list[str]]:
    return [
        [name] + [fmt(cell(row, path)) for _, path in COLUMNS]
        for name, row in results["methods"].items()
    ]


def text_table(results: dict) -> str:
    header = ["method"] + [c for c, _ in COLUMNS]
    rows = [header] + table_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    header = ["method"] + [c for c, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(results)]
    return "\n".join(lines) + "\n"


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
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method"] + [c for c, _ in COLUMNS])
    for name, row in results["methods"].items():
        writer.writerow([name] + [cell(row, path) for _, path in COLUMNS])
    _atomic_write(out / "results.csv", buf.getvalue())
    _atomic_write(out / "results.md", markdown_table(results))
