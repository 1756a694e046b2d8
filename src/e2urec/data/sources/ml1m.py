"""MovieLens 1M exactly as GroupLens publishes it: a folder with users.dat, movies.dat, ratings.dat.

Fields are separated by "::". users.dat and ratings.dat are plain ASCII (read as UTF-8);
movies.dat is ISO-8859-1. Titles are kept as written ("Toy Story (1995)": the year is part of it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.data.prompt import MOVIE
from e2urec.data.sources.base import PROFILE, Interactions
from e2urec.data.sources.text import check, decode, split_fields, unique, whole_numbers

FILES = ("users.dat", "movies.dat", "ratings.dat")
GENDERS = {"M": "male", "F": "female"}
# The ML-1M README's names, except that the paper's prompts say "under 18" and "above 56".
AGES = {
    1: "under 18",
    18: "18-24",
    25: "25-34",
    35: "35-44",
    45: "45-49",
    50: "50-55",
    56: "above 56",
}
JOBS = {
    0: "other or not specified",  # the README: `"other" or not specified`
    1: "academic/educator",
    2: "artist",
    3: "clerical/admin",
    4: "college/grad student",
    5: "customer service",
    6: "doctor/health care",
    7: "executive/managerial",
    8: "farmer",
    9: "homemaker",
    10: "K-12 student",
    11: "lawyer",
    12: "programmer",
    13: "retired",
    14: "sales/marketing",
    15: "scientist",
    16: "self-employed",
    17: "technician/engineer",
    18: "tradesman/craftsman",
    19: "unemployed",
    20: "writer",
}
STARS = (1, 5)


def coded(path: Path, codes: np.ndarray, names: dict, field: str) -> np.ndarray:
    known = np.fromiter(names, dtype="int64")
    check(
        path,
        ~np.isin(codes, known),
        lambda i: f"{field} {codes[i]} is not one of the codes {', '.join(map(str, names))}",
    )
    return pd.Series(codes).map(names).to_numpy(dtype=object)


def read_users(path: Path) -> pd.DataFrame:
    """gender/age/job names, indexed by user id."""
    f = split_fields(
        path, decode(path, "utf-8"), ("UserID", "Gender", "Age", "Occupation", "Zip-code"), "::"
    )
    ids = whole_numbers(path, f["UserID"], "UserID")
    unique(path, ids, "UserID")
    gender = f["Gender"].to_numpy(dtype=object)
    check(path, ~np.isin(gender, list(GENDERS)), lambda i: f"Gender {gender[i]!r} is not M or F")
    return pd.DataFrame(
        {
            "gender": pd.Series(gender).map(GENDERS).to_numpy(dtype=object),
            "age": coded(path, whole_numbers(path, f["Age"], "Age"), AGES, "Age"),
            "job": coded(
                path, whole_numbers(path, f["Occupation"], "Occupation"), JOBS, "Occupation"
            ),
        },
        index=ids,
    )


def read_movies(path: Path) -> pd.Series:
    """Titles indexed by movie id."""
    f = split_fields(path, decode(path, "iso-8859-1"), ("MovieID", "Title", "Genres"), "::")
    ids = whole_numbers(path, f["MovieID"], "MovieID")
    unique(path, ids, "MovieID")
    return pd.Series(f["Title"].to_numpy(dtype=object), index=ids)


def read_ratings(path: Path, users: pd.Index, movies: pd.Index) -> dict[str, np.ndarray]:
    fields = ("UserID", "MovieID", "Rating", "Timestamp")
    f = split_fields(path, decode(path, "utf-8"), fields, "::")
    cols = {name: whole_numbers(path, f[name], name) for name in fields}
    user, movie, rating = cols["UserID"], cols["MovieID"], cols["Rating"]
    check(path, ~np.isin(user, users), lambda i: f"UserID {user[i]} is not in users.dat")
    check(path, ~np.isin(movie, movies), lambda i: f"MovieID {movie[i]} is not in movies.dat")
    lo, hi = STARS
    check(path, (rating < lo) | (rating > hi), lambda i: f"Rating {rating[i]} is outside {lo}-{hi}")
    return cols


def load_ml1m(raw: str | Path | None = None) -> Interactions:
    if raw is None:
        raise ValueError(f"ml-1m needs --raw: the folder holding {', '.join(FILES)}")
    paths = [Path(raw) / name for name in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"ml-1m: file(s) not found: {', '.join(missing)}")
    users = read_users(paths[0])
    titles = read_movies(paths[1])
    r = read_ratings(paths[2], users.index, titles.index)
    frame = pd.DataFrame(
        {
            "user": r["UserID"].astype(str),
            "item": r["MovieID"].astype(str),
            "rating": r["Rating"].astype(float),
            "timestamp": r["Timestamp"],
            "title": titles.reindex(r["MovieID"]).to_numpy(),
            **{k: users[k].reindex(r["UserID"]).to_numpy() for k in PROFILE},
        }
    )
    return Interactions(frame=frame, kind=MOVIE, files=paths)
