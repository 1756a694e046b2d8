"""Raw data sets -> one interactions table.

Every loader returns `Interactions`: a frame with columns user, item, rating, timestamp, title
(plus gender, age, job where the data has them), the item kind for the prompt, and the files read
(for the manifest's checksum). Register a loader once in `LOADERS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from e2urec.data.sources.base import Interactions, validate
from e2urec.data.sources.goodreads import load_goodreads
from e2urec.data.sources.interactions import load_interactions
from e2urec.data.sources.ml1m import load_ml1m
from e2urec.data.sources.ml100k import load_ml100k
from e2urec.data.sources.movielens_small import load_movielens_small

Loader = Callable[..., Interactions]
# Prompts made elsewhere: samples already, read by `prepare` itself (data/sources/prompts.py).
PROMPTS = "prompts"

LOADERS: dict[str, Loader] = {
    "movielens": load_movielens_small,
    "ml-1m": load_ml1m,
    "ml-100k": load_ml100k,
    "goodreads": load_goodreads,
    "interactions": load_interactions,
}


def load(name: str, raw: str | Path | None = None, db=None, **options) -> Interactions:
    """`db`: the DuckDB connection to load into (default: a new one in memory)."""
    if name not in LOADERS:
        known = ", ".join(sorted([*LOADERS, PROMPTS]))
        raise ValueError(f"unknown data set {name!r}; known: {known}")
    # An option meant for another loader (say --titles with ml-1m) is an error, not a TypeError.
    accepted = list(inspect.signature(LOADERS[name]).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "none"
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; it takes: {takes}")
    data = LOADERS[name](raw, db, **options)
    if data.count() == 0:
        raise ValueError(f"{name}: no interactions")
    return data


__all__ = ["LOADERS", "PROMPTS", "Interactions", "load", "validate"]
