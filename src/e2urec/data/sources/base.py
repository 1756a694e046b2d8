"""The interactions table every loader produces, and its checks."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from e2urec.data.prompt import MOVIE, ItemKind

REQUIRED = ("user", "item", "rating", "timestamp", "title")
PROFILE = ("gender", "age", "job")


@dataclass
class Interactions:
    frame: pd.DataFrame
    kind: ItemKind = MOVIE
    files: list[Path] = field(default_factory=list)

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.files):
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return "sha256:" + digest.hexdigest()


def validate(frame: pd.DataFrame, where: str) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where}: missing column(s) {', '.join(missing)}; need {', '.join(REQUIRED)}"
        )
    if frame.empty:
        raise ValueError(f"{where}: no interactions")
    for col in ("rating", "timestamp"):
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise ValueError(f"{where}: column {col!r} must be numeric")
    bad = frame[frame["rating"].isna() | frame["timestamp"].isna()]
    if not bad.empty:
        row = bad.iloc[0]
        raise ValueError(f"{where}: missing rating/timestamp for user {row.user}, item {row.item}")
