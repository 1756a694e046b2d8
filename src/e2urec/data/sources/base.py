"""The interactions every loader produces, held in DuckDB, and their checks.

A loader leaves in its database a relation `interactions` with columns seq (the order of the raw
file), user, item (text), rating, timestamp (unix seconds), title, and gender, age, job where the
data has them. Only the kept samples ever come back to Python.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from e2urec.data.prompt import MOVIE, ItemKind
from e2urec.data.sources import engine

REQUIRED = ("user", "item", "rating", "timestamp", "title")
PROFILE = ("gender", "age", "job")


class Interactions:
    """`Interactions(frame)` stores a frame; loaders fill `db` themselves and pass it."""

    def __init__(
        self,
        frame: pd.DataFrame | None = None,
        kind: ItemKind = MOVIE,
        files: list[Path] | tuple = (),
        db: duckdb.DuckDBPyConnection | None = None,
    ):
        self.kind, self.files = kind, [Path(p) for p in files]
        self.db = db if db is not None else engine.connect()
        if frame is not None:
            store(self.db, frame)

    @property
    def frame(self) -> pd.DataFrame:
        """Everything in memory, in file order: for small data and tests."""
        query = "SELECT * EXCLUDE (seq) FROM interactions ORDER BY seq"
        return self.db.execute(query).df()

    def columns(self) -> list[str]:
        return [row[0] for row in self.db.execute("DESCRIBE interactions").fetchall()]

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM interactions").fetchall()[0][0]

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self.files):
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return "sha256:" + digest.hexdigest()


def text(column: pd.Series) -> np.ndarray:
    return np.array([None if pd.isna(v) else str(v) for v in column], dtype=object)


def store(db: duckdb.DuckDBPyConnection, frame: pd.DataFrame) -> None:
    validate(frame, where="interactions")
    table = pd.DataFrame(
        {
            "seq": np.arange(len(frame), dtype="int64"),
            "user": frame["user"].astype(str).to_numpy(dtype=object),
            "item": frame["item"].astype(str).to_numpy(dtype=object),
            "rating": frame["rating"].to_numpy(dtype=float),
            "timestamp": frame["timestamp"].to_numpy(dtype="int64"),
            "title": frame["title"].astype(str).to_numpy(dtype=object),
            **{k: text(frame[k]) for k in PROFILE if k in frame},
        }
    )
    db.register("incoming", table)
    try:
        db.execute("CREATE OR REPLACE TABLE interactions AS SELECT * FROM incoming")
    finally:
        db.unregister("incoming")


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
