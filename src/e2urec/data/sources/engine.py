"""The out-of-core engine: raw files stream through DuckDB a block of lines at a time.

Python only cuts bytes into lines (so that a bad byte is reported with its line) and hands each
block to DuckDB, which checks every line, parses it and appends it to a table on disk. Sorting,
windowing and the last-N cut then run inside DuckDB, which spills to its temporary folder when
the data outgrow the memory limit.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from e2urec.data.sources.text import fail_at

BLOCK_BYTES = 32 << 20
LIMIT = re.compile(r"[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
Check = tuple[str, str]  # (SQL condition that marks a bad row, SQL expression for its message)


def default_memory_limit() -> str:
    """An eighth of the machine's memory: `prepare` should not crowd out what else runs there."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(256, total // 8 >> 20)}MB"


def connect(
    folder: Path | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A database in `folder` (spilling there too), or in memory for small data."""
    limit = memory_limit or default_memory_limit()
    if not LIMIT.fullmatch(limit.strip()):
        raise ValueError(f"memory limit {limit!r} is not a size such as 2GB or 512MB")
    db = duckdb.connect(str(folder / "work.duckdb") if folder else ":memory:")
    db.execute(f"SET memory_limit = '{limit.strip()}'")
    if folder:
        db.execute(f"SET temp_directory = '{folder / 'spill'}'")
    # Every result is ordered explicitly, so DuckDB need not buffer rows to keep their order.
    db.execute("SET preserve_insertion_order = false")
    db.execute("SET enable_progress_bar = false")  # it would write into `prepare`'s output
    return db


@contextmanager
def workspace(
    out: str | Path, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A database in a temporary folder beside `out`, removed afterwards whatever happens."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.engine-"))
    try:
        db = connect(folder, memory_limit)
        try:
            yield db
        finally:
            db.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bad_byte(byte: int, encoding: str) -> str:
    return f"byte 0x{byte:02x} is not valid {encoding}"


def line_blocks(
    path: Path, encoding: str, explain: Callable[[int, str], str] = bad_byte
) -> Iterator[pa.Table]:
    """Tables (n, line) of whole lines, n counting from 1; plain or gzipped files."""
    opener = gzip.open if path.name.endswith(".gz") else open
    first, rest = 1, b""
    try:
        with opener(path, "rb") as fh:
            while True:
                chunk = fh.read(BLOCK_BYTES)
                data = rest + chunk
                cut = data.rfind(b"\n") + 1 if chunk else len(data)
                piece, rest = data[:cut], data[cut:]
                if piece:
                    lines = split_lines(path, piece, first, encoding, explain)
                    yield pa.table({"n": np.arange(first, first + len(lines)), "line": lines})
                    first += len(lines)
                if not chunk:
                    return
    except (OSError, EOFError) as err:  # a truncated or non-gzip .gz file
        raise ValueError(f"{path}: cannot read ({err})") from None


def split_lines(
    path: Path, piece: bytes, first: int, encoding: str, explain: Callable[[int, str], str]
) -> pa.Array:
    """Lines of `piece` (whole lines, the first being line `first`) as Arrow strings."""

    def decoded() -> str:
        try:
            return piece.decode(encoding)
        except UnicodeDecodeError as err:
            line = first + piece.count(b"\n", 0, err.start)
            fail_at(path, line, explain(piece[err.start], encoding))

    # Plain UTF-8 is split and checked by Arrow without making Python strings.
    if encoding != "utf-8" or b"\r" in piece:
        piece = decoded().replace("\r\n", "\n").encode("utf-8")
    lines = pc.split_pattern(pa.array([piece], pa.binary()), b"\n").flatten()
    try:
        lines = lines.cast(pa.string())
    except pa.ArrowInvalid:
        decoded()  # raises at the bad byte's line
        raise
    # not splitlines(): it also breaks on \x85, which is a letter in ISO-8859-1
    return lines.slice(0, len(lines) - 1) if lines[-1].as_py() == "" else lines


def first_error(db, path: Path, rows: str, checks: list[Check], unit: str = "line") -> None:
    """Raise for the first row of `rows` (a query with a column n) that fails a check."""
    if not checks:
        return
    why = " ".join(f"WHEN {bad} THEN {message}" for bad, message in checks)
    found = db.execute(
        f"SELECT n, why FROM (SELECT n, CASE {why} END AS why FROM ({rows})) "
        "WHERE why IS NOT NULL ORDER BY n LIMIT 1"
    ).fetchall()
    found = found[0] if found else None
    if found:
        fail_at(path, found[0], found[1], unit)


def ingest(
    db, path: Path, blocks: Iterator[pa.Table], rows: str, checks: list[Check], insert: str,
    unit: str = "line",
) -> None:  # fmt: skip
    """Per block: parse it with `rows` (a query over `block`) once, raise at its first bad row,
    else run `insert`, which reads the parsed rows as {rows}."""
    for block in blocks:
        db.register("block", block)
        try:
            db.execute(f"CREATE OR REPLACE TEMP TABLE parsed AS {rows}")
        finally:
            db.unregister("block")
        first_error(db, path, "SELECT * FROM parsed", checks, unit)
        db.execute(insert.replace("{rows}", "parsed"))
    db.execute("DROP TABLE IF EXISTS parsed")


def quoted(sql: str) -> str:
    """Python's repr of a plain string, in SQL: 'soon'."""
    return f"'''' || {sql} || ''''"


def whole(sql: str) -> str:
    # 18 digits at most, so the value always fits in BIGINT
    return f"regexp_full_match({sql}, '[0-9]{{1,18}}')"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def first_duplicate(db, path: Path, table: str, key: str, name: str, unit: str = "line") -> None:
    """Raise at the second appearance of a key in `table` (columns n and `key`)."""
    found = db.execute(
        f"SELECT n, {key} FROM (SELECT n, {key}, row_number() OVER (PARTITION BY {key} ORDER BY n)"
        f" AS k FROM {table}) WHERE k > 1 ORDER BY n LIMIT 1"
    ).fetchall()
    found = found[0] if found else None
    if found:
        fail_at(path, found[0], f"{name} {found[1]} appears a second time", unit)


def first_row(db, sql: str) -> tuple | None:
    """The first row or None; fetching all keeps the connection free for the next statement."""
    rows = db.execute(sql).fetchall()
    return rows[0] if rows else None
