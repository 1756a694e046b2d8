"""MovieLens 100K with user profiles, as the `recbole` package ships it (no download).

`recbole==1.2.1` holds `dataset_example/ml-100k/` with three tab-separated files whose first line
names typed fields (`user_id:token`): ml-100k.inter (user_id, item_id, rating, timestamp),
ml-100k.user (age, gender, occupation, zip_code) and ml-100k.item (movie_title, release_year,
class). RecBole split the year off GroupLens's titles; it is put back as "Title (Year)". Ages are
years ("24"), occupations are kept as written ("technician").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.data.prompt import MOVIE
from e2urec.data.sources.base import PROFILE, Interactions
from e2urec.data.sources.text import check, decode, unique

INSTALL = "pip install --no-deps recbole==1.2.1"
PACKAGE_FOLDER = "dataset_example/ml-100k"
FILES = ("ml-100k.user", "ml-100k.item", "ml-100k.inter")
GENDERS = {"M": "male", "F": "female"}
# RecBole writes the one movie without title or date (item 267) as "unkonwn"; GroupLens "unknown".
UNKNOWN = {"unknown", "unkonwn"}
STARS = (1, 5)


def package_folder() -> Path:
    # find_spec, not import: importing recbole pulls in its own (uninstalled) dependencies.
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"ml-100k needs the recbole package (its example data): {INSTALL}")
    return Path(spec.submodule_search_locations[0]) / PACKAGE_FOLDER


def read_table(path: Path, fields: tuple[str, ...]) -> pd.DataFrame:
    """The named columns (as strings) of a RecBole atomic file; row i is line i + 2."""
    lines = decode(path, "utf-8").replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        raise ValueError(f"{path}: no rows under the header")
    header = [name.split(":")[0] for name in lines[0].split("\t")]
    missing = [f for f in fields if f not in header]
    if missing:
        raise ValueError(f"{path}, line 1: no field(s) {', '.join(missing)} in the header")
    rows = lines[1:]
    count = pd.Series(rows, dtype=object).str.count("\t").to_numpy() + 1
    check(
        path,
        count != len(header),
        lambda i: f"expected {len(header)} tab-separated fields, found {count[i]}",
        first=2,
    )
    cells = np.array("\t".join(rows).split("\t"), dtype=object).reshape(len(rows), len(header))
    return pd.DataFrame({f: cells[:, header.index(f)] for f in fields})


def numbers(path: Path, column: pd.Series, name: str) -> np.ndarray:
    """Whole numbers, also when written as floats ("881250949.0"); errors name the line."""
    ok = column.str.fullmatch(r"[0-9]{1,18}(\.0*)?").to_numpy(dtype=bool)
    check(path, ~ok, lambda i: f"{name} {column.iat[i]!r} is not a whole number", first=2)
    return column.str.replace(r"\.0*$", "", regex=True).astype("int64").to_numpy()


def read_users(path: Path) -> pd.DataFrame:
    """gender/age/job, indexed by user id."""
    f = read_table(path, ("user_id", "age", "gender", "occupation"))
    unique(path, f["user_id"].to_numpy(), "user_id")
    gender = f["gender"].to_numpy(dtype=object)
    check(
        path,
        ~np.isin(gender, list(GENDERS)),
        lambda i: f"gender {gender[i]!r} is not M or F",
        first=2,
    )
    age = numbers(path, f["age"], "age")
    return pd.DataFrame(
        {
            "gender": pd.Series(gender).map(GENDERS).to_numpy(dtype=object),
            "age": age.astype(str).astype(object),
            "job": f["occupation"].to_numpy(dtype=object),
        },
        index=f["user_id"].to_numpy(),
    )


def read_items(path: Path) -> pd.Series:
    """Titles as "Title (Year)" by item id: no year where RecBole has none, "Movie <id>" for none."""
    f = read_table(path, ("item_id", "movie_title", "release_year"))
    ids = f["item_id"].to_numpy()
    unique(path, ids, "item_id")
    title = f["movie_title"].str.strip()
    title = title.where(~title.str.lower().isin(UNKNOWN) & (title != ""), "Movie " + f["item_id"])
    year = f["release_year"]
    full = title + np.where(year.str.fullmatch(r"[0-9]{4}"), " (" + year + ")", "")
    return pd.Series(full.to_numpy(dtype=object), index=ids)


def read_ratings(path: Path, users: pd.Index, items: pd.Index) -> pd.DataFrame:
    f = read_table(path, ("user_id", "item_id", "rating", "timestamp"))
    user, item = f["user_id"].to_numpy(), f["item_id"].to_numpy()
    known_user, known_item = np.isin(user, users), np.isin(item, items)
    check(path, ~known_user, lambda i: f"user_id {user[i]} is not in the .user file", first=2)
    check(path, ~known_item, lambda i: f"item_id {item[i]} is not in the .item file", first=2)
    rating = numbers(path, f["rating"], "rating")
    lo, hi = STARS
    outside = (rating < lo) | (rating > hi)
    check(path, outside, lambda i: f"rating {rating[i]} is outside {lo}-{hi}", first=2)
    return pd.DataFrame(
        {
            "user": user,
            "item": item,
            "rating": rating.astype(float),
            "timestamp": numbers(path, f["timestamp"], "timestamp"),
        }
    )


def load_ml100k(raw: str | Path | None = None, db=None) -> Interactions:
    """`raw`: a folder with ml-100k.user/.item/.inter; default: the copy inside recbole."""
    folder = Path(raw) if raw else package_folder()
    paths = [folder / name for name in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        hint = "" if raw else f" (reinstall: {INSTALL})"
        raise ValueError(f"ml-100k: file(s) not found: {', '.join(missing)}{hint}")
    users = read_users(paths[0])
    titles = read_items(paths[1])
    r = read_ratings(paths[2], users.index, titles.index)
    frame = pd.DataFrame(
        {
            "user": r["user"].astype(str),
            "item": r["item"].astype(str),
            "rating": r["rating"],
            "timestamp": r["timestamp"],
            "title": titles.reindex(r["item"]).to_numpy(),
            **{k: users[k].reindex(r["user"]).to_numpy() for k in PROFILE},
        }
    )
    return Interactions(frame, kind=MOVIE, files=paths, db=db)
