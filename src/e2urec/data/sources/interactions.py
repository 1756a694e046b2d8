"""Any interaction log: a CSV or Parquet file with one rating per row.

Columns user, item, rating and timestamp are required; other names are given with `user_col`,
`item_col`, `rating_col`, `time_col`. Timestamps are whole unix seconds or ISO 8601 date-times
("2015-11-17T11:37:35-08:00"; one without a zone is read as UTC; fractions of a second are
dropped). Columns named gender ("male" or "female"), age and job, where present, fill the prompt's
profile. Titles come from an optional CSV `titles` with columns item,title; an item without one
is called by its id.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.data.sources.base import PROFILE, Interactions
from e2urec.data.sources.text import check, decode

GENDERS = ("male", "female")


class Table:
    """A read file and how its rows are counted in messages (CSV: line i + 2, after the header)."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix == ".parquet":
            self.frame, self.first, self.unit = read_parquet(path), 1, "row"
        else:
            self.frame, self.first, self.unit = read_csv(path), 2, "line"

    def column(self, name: str) -> pd.Series:
        if name not in self.frame.columns:
            have = ", ".join(map(str, self.frame.columns))
            raise ValueError(f"{self.path}: no column {name!r} (columns: {have})")
        return self.frame[name]

    def check(self, bad, describe) -> None:
        check(self.path, np.asarray(bad, dtype=bool), describe, self.first, self.unit)


def read_csv(path: Path) -> pd.DataFrame:
    text = decode(path, "utf-8")  # decoded here so that a bad byte is reported with its line
    try:
        # Blank lines are kept so that row i stays line i + 2; they fail as missing values.
        return pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: {err}") from None


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as Parquet ({err})") from None


def blank(col: pd.Series) -> pd.Series:
    return col.isna() | (col.astype(object).map(str).str.strip() == "")


def ids(table: Table, name: str) -> pd.Series:
    col = table.column(name)
    table.check(blank(col), lambda i: f"{name} is empty")
    return col.astype(object).map(str)


def ratings(table: Table, name: str) -> np.ndarray:
    col = table.column(name)
    values = pd.to_numeric(col, errors="coerce").astype(float).to_numpy()
    table.check(~np.isfinite(values), lambda i: f"{name} {col.iat[i]!r} is not a number")
    return values


def to_seconds(times: pd.Series) -> pd.Series:
    """Whole seconds as floats (exact below 2**53), NaN where unreadable; fractions dropped."""
    if times.dt.tz is None:
        times = times.dt.tz_localize("UTC")
    return (times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def seconds_of(col: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(col):
        return to_seconds(col)
    if pd.api.types.is_numeric_dtype(col):
        return col.astype(float).where(col % 1 == 0)
    text = col.astype(object).map(lambda v: "" if pd.isna(v) else str(v).strip())
    whole = text.str.fullmatch(r"-?[0-9]{1,18}").to_numpy(dtype=bool)
    out = pd.Series(np.nan, index=col.index)
    out[whole] = text[whole].astype("int64")
    iso = pd.to_datetime(text[~whole], format="ISO8601", utc=True, errors="coerce")
    out[~whole] = to_seconds(iso)
    return out


def timestamps(table: Table, name: str) -> np.ndarray:
    col = table.column(name)
    seconds = seconds_of(col).to_numpy()
    table.check(
        np.isnan(seconds) | (seconds != np.floor(seconds)),
        lambda i: f"{name} {col.iat[i]!r} is not whole unix seconds or an ISO 8601 date-time",
    )
    return seconds.astype("int64")


def profile(table: Table) -> dict[str, pd.Series]:
    cols = {
        k: table.frame[k].mask(blank(table.frame[k])).astype(object)
        for k in PROFILE
        if k in table.frame
    }
    if "gender" in cols:
        gender = cols["gender"]
        bad = gender.notna() & ~gender.isin(GENDERS)
        table.check(bad, lambda i: f"gender {gender.iat[i]!r} is not male or female (or empty)")
    return cols


def read_titles(path: Path) -> dict[str, str]:
    table = Table(path)
    items, titles = ids(table, "item"), table.column("title")
    table.check(items.duplicated(), lambda i: f"item {items.iat[i]} appears a second time")
    named = ~blank(titles)
    return dict(zip(items[named], titles[named].astype(object).map(str)))


def load_interactions(
    raw: str | Path | None = None,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str = "rating",
    time_col: str = "timestamp",
    titles: str | Path | None = None,
) -> Interactions:
    if raw is None:
        raise ValueError("interactions needs --raw FILE: a .csv or .parquet interaction log")
    files = [Path(raw)] + ([Path(titles)] if titles else [])
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"interactions: file(s) not found: {', '.join(missing)}")
    table = Table(files[0])
    frame = pd.DataFrame(
        {
            "user": ids(table, user_col).to_numpy(),
            "item": ids(table, item_col).to_numpy(),
            "rating": ratings(table, rating_col),
            "timestamp": timestamps(table, time_col),
            **{k: v.to_numpy() for k, v in profile(table).items()},
        }
    )
    names = read_titles(files[1]) if titles else {}
    frame["title"] = [names.get(item, item) for item in frame["item"]]
    return Interactions(frame=frame, files=files)
