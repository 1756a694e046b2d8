"""Raw-file reading whose every error names the file, the line and what is wrong.

Small files (ML-100K's) are checked whole in memory with vectorised tests; the first bad row is
looked up only when a test fails. Large ones stream through `engine` instead.
"""

from __future__ import annotations

from collections.abc import Callable
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


def unique(path: Path, ids: np.ndarray, name: str) -> None:
    dup = pd.Series(ids).duplicated().to_numpy()
    check(path, dup, lambda i: f"{name} {ids[i]} appears a second time")
