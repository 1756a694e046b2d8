"""How `e2urec prepare` scales: time and peak memory at 1M, 10M and 50M ratings, in one run.

For each size N it writes a synthetic set in the ML-1M format (users.dat, movies.dat,
ratings.dat: N ratings, 165 a user as in ML-1M, three in each second) and one in the GoodReads
format (N JSON lines shaped like `goodreads_interactions_dedup.json`, a quarter of them rating 0
as "shelved", plus a books file), runs `e2urec prepare` on each in a fresh interpreter, and
prints lines per second and that process's peak RSS, then how both grow with N (the exponent b
in time ~ N^b: 1 is linear). The files are written by DuckDB and removed after each size.

    python benchmarks/prepare_scale.py                      # 1M, 10M and 50M
    python benchmarks/prepare_scale.py --ratings 1000000    # one size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

PER_USER, MOVIES = 165, 3900
START = 956_703_932  # the first ML-1M timestamp (2000-04-25)
SPAN = 86_400 * 365 * 3  # users start within three years
AGES, JOBS = "[1, 18, 25, 35, 45, 50, 56]", 21
INTERACTIONS, BOOKS = "goodreads_interactions_dedup.json", "goodreads_books.json"
LINES = "(FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\t')"  # a value a line


def write_ml1m(folder: Path, n: int) -> None:
    users = math.ceil(n / PER_USER)
    db = duckdb.connect()
    gender = "CASE WHEN hash(u) % 2 = 0 THEN 'M' ELSE 'F' END"
    age = f"{AGES}[(1 + hash(u * 3) % 7)::BIGINT]"
    user = f"concat_ws('::', u, {gender}, {age}, hash(u * 5) % {JOBS}, '00000')"
    db.execute(
        f"COPY (SELECT {user} FROM range(1, {users + 1}) t(u)) TO '{folder / 'users.dat'}' {LINES}"
    )
    movie = (
        "concat_ws('::', m, 'Movie ' || m || ' a la carte (' || (1919 + m % 81) || ')', 'Drama')"
    )
    db.execute(
        f"COPY (SELECT {movie} FROM range(1, {MOVIES + 1}) t(m)) "
        f"TO '{folder / 'movies.dat'}' {LINES}"
    )
    # Rows grouped by user as in ML-1M; each user rates three movies a second, a minute apart.
    time = f"{START} + hash(u) % {SPAN} + (i % {PER_USER}) // 3 * 60"
    rating = f"concat_ws('::', u, 1 + hash(i) % {MOVIES}, 1 + hash(i * 7) % 5, {time})"
    users = f"SELECT i, i // {PER_USER} + 1 AS u FROM range({n}) t(i)"
    db.execute(f"COPY (SELECT {rating} FROM ({users})) TO '{folder / 'ratings.dat'}' {LINES}")


def write_goodreads(folder: Path, n: int) -> None:
    books = max(1000, n // 100)
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    when = "strftime(to_timestamp({t}), '%a %b %d %H:%M:%S -0000 %Y')"
    line = f"""json_object(
        'user_id', md5(u::TEXT), 'book_id', (1 + hash(i) % {books})::TEXT,
        'review_id', md5(i::TEXT), 'is_read', true,
        'rating', greatest(0, (hash(i * 7) % 6)::INT - (hash(i) % 2)::INT),
        'review_text_incomplete', '',
        'date_added', {when.format(t=f"{START} + hash(u) % {SPAN}")},
        'date_updated', {when.format(t=f"{START} + hash(u) % {SPAN} + (i % {PER_USER}) // 3 * 60")},
        'read_at', '', 'started_at', '')"""
    users = f"SELECT i, i // {PER_USER} AS u FROM range({n}) t(i)"
    db.execute(f"COPY (SELECT {line} FROM ({users})) TO '{folder / INTERACTIONS}' {LINES}")
    title = "'Book ' || b || ' (Series #' || b % 7 || ')'"
    book = f"json_object('book_id', b::TEXT, 'title', {title}, 'isbn', '', 'language_code', 'eng')"
    db.execute(
        f"COPY (SELECT {book} FROM range(1, {books + 1}) t(b)) TO '{folder / BOOKS}' {LINES}"
    )


def run_prepare(dataset: str, raw: Path, out: Path) -> dict:
    """Seconds and peak RSS of `e2urec prepare` in its own process."""
    command = [sys.executable, "-m", "e2urec.cli", "prepare", "--dataset", dataset]
    started = time.perf_counter()
    child = subprocess.Popen(
        [*command, "--raw", str(raw), "--out", str(out)], stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"prepare --dataset {dataset} failed (status {status})")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
        "candidates": manifest["candidates"],
        "counts": [manifest["counts"][k] for k in ("train", "valid", "test")],
    }


def ml1m_candidates(n: int) -> int:
    """Every rating after a user's fifth has enough history."""
    full, rest = divmod(n, PER_USER)
    return full * (PER_USER - 5) + max(0, rest - 5)


def measure(n: int, work: Path) -> list[dict]:
    rows = []
    for dataset, write in (("ml-1m", write_ml1m), ("goodreads", write_goodreads)):
        raw = work / dataset
        raw.mkdir()
        started = time.perf_counter()
        write(raw, n)
        written = time.perf_counter() - started
        result = run_prepare(dataset, raw, work / f"{dataset}-out")
        size = sum(p.stat().st_size for p in raw.iterdir())
        row = {"format": dataset, "lines": n, "raw_mb": round(size / 2**20), **result}
        row["lines_per_s"] = round(n / result["seconds"])
        row["write_seconds"] = round(written, 1)
        if dataset == "ml-1m":
            row["candidates_ok"] = result["candidates"] == ml1m_candidates(n)
        print(json.dumps(row), flush=True)
        rows.append(row)
        for path in (raw, work / f"{dataset}-out"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    return rows


def growth(rows: list[dict]) -> list[str]:
    """Per format: time ~ N^b and RSS ratios between consecutive sizes."""
    lines = []
    for fmt in ("ml-1m", "goodreads"):
        mine = sorted((r for r in rows if r["format"] == fmt), key=lambda r: r["lines"])
        for a, b in zip(mine, mine[1:]):
            scale = b["lines"] / a["lines"]
            exponent = math.log(b["seconds"] / a["seconds"]) / math.log(scale)
            lines.append(
                f"{fmt}: {a['lines']:,} -> {b['lines']:,} lines (x{scale:g}): time x"
                f"{b['seconds'] / a['seconds']:.2f} (N^{exponent:.2f}), peak RSS x"
                f"{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}"
            )
    return lines


def table(rows: list[dict]) -> str:
    head = "| format | lines | raw MB | seconds | lines/s | peak RSS MB | train/valid/test |"
    out = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['format']} | {r['lines']:,} | {r['raw_mb']:,} | {r['seconds']} | "
            f"{r['lines_per_s']:,} | {r['peak_rss_mb']:,} | {'/'.join(map(str, r['counts']))} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ratings", type=int, nargs="+", default=[1_000_000, 10_000_000, 50_000_000]
    )
    parser.add_argument("--work", help="folder for the synthetic files (default: system temp)")
    args = parser.parse_args()
    print(f"# {platform.node()}, {os.cpu_count()} cores; load: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        rows = []
        for n in args.ratings:
            work = Path(tmp) / str(n)
            work.mkdir()
            rows += measure(n, work)
    print(table(rows))
    print("\n".join(growth(rows)))
    print(f"# load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
