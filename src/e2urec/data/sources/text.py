"""Raw-file reading whose every error names the file, the line and what is wrong.

Files are checked whole with vectorised tests (a million lines in seconds); the first bad row
is looked up only when a test fails.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd


def fail_at(path: Path, line: int, what: str, unit: str = "line") -> NoReturn:
    raise ValueError(f"{path}, {unit} {line}: {what}")


def check(
    path: Path, bad: np.ndarray, describe: Callable[[int], str], first: int = 1, unit: str = "line"
) -> None:
    """Raise for the first True row of `bad`; row i is `unit` i + `first` of the file."""
    if bad.any():
        i = int(np.argmax(bad))
        fail_at(path, i + first, describe(i), unit)


def decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        fail_at(path, line, f"byte 0x{data[err.start]:02x} is not valid {encoding}")


def split_fields(path: Path, text: str, names: tuple[str, ...], sep: str) -> pd.DataFrame:
    """One string column per field; row i is line i + 1."""
    # not splitlines(): it also breaks on \x85, which is a letter in ISO-8859-1
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file")
    count = pd.Series(lines, dtype=object).str.count(sep).to_numpy() + 1
    check(
        path,
        count != len(names),
        lambda i: f"expected {len(names)} fields ({sep.join(names)}), found {count[i]}",
    )
    # Every line has the same number of separators, so one flat split reshapes into rows.
    fields = np.array(sep.join(lines).split(sep), dtype=object).reshape(len(lines), len(names))
    return pd.DataFrame(fields, columns=list(names))


def whole_numbers(path: Path, column: pd.Series, name: str) -> np.ndarray:
    # 18 digits at most, so the value always fits in int64
    ok = column.str.fullmatch(r"[0-9]{1,18}").to_numpy(dtype=bool)
    check(path, ~ok, lambda i: f"{name} {column.iat[i]!r} is not a whole number")
    return column.astype("int64").to_numpy()


def unique(path: Path, ids: np.ndarray, name: str) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    check(path, dup, lambda i: f"{name} {ids[i]} appears a second time")


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as err:  # includes undecodable bytes
                    fail_at(path, lineno, f"not valid JSON ({err})")
                if not isinstance(row, dict):
                    fail_at(path, lineno, "expected a JSON object")
                yield lineno, row
    except (OSError, EOFError) as err:  # a truncated or non-gzip .gz file
        raise ValueError(f"{path}: cannot read ({err})") from None
