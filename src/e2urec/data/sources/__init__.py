"""Raw data sets -> one interactions table.

Every loader returns `Interactions`: a frame with columns user, item, rating, timestamp, title
(plus gender, age, job where the data has them), the item kind for the prompt, and the files read
(for the manifest's checksum). Register a loader once in `LOADERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from e2urec.data.sources.base import Interactions, validate
from e2urec.data.sources.movielens_small import load_movielens_small

Loader = Callable[..., Interactions]

LOADERS: dict[str, Loader] = {
    "movielens": load_movielens_small,
}


def load(name: str, raw: str | Path | None = None, **options) -> Interactions:
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(LOADERS))}")
    data = LOADERS[name](raw, **options)
    validate(data.frame, where=name)
    return data


__all__ = ["LOADERS", "Interactions", "load", "validate"]
