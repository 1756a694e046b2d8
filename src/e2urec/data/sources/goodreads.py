"""GoodReads from the UCSD Book Graph (Wan & McAuley), as its JSON Lines files are published.

`--raw DIR` must hold exactly one interactions file and one book-metadata file, each plain or
gzipped JSON Lines:

- `goodreads_interactions*.json[.gz]`: the full `goodreads_interactions_dedup.json.gz` or a genre
  subset such as `goodreads_interactions_comics_graphic.json.gz` (the `.csv` edition, which uses
  re-numbered ids, is not read);
- `goodreads_books*.json[.gz]`: the matching `goodreads_books.json.gz` or
  `goodreads_books_comics_graphic.json.gz`.

More than one match of either kind is refused rather than guessed at: keep one pair per folder.
A rating of 0 means "shelved but not rated" and is dropped. The time of a rating is `date_updated`
(when the rating was last set; `read_at` is mostly empty and `date_added` is when it was shelved).
There are no demographics, so prompts start at the history.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.data.prompt import BOOK
from e2urec.data.sources.base import Interactions
from e2urec.data.sources.text import fail_at, json_lines

INTERACTIONS, BOOKS = "goodreads_interactions*", "goodreads_books*"
TIME_FIELD = "date_updated"
TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # Tue Nov 17 11:37:35 -0800 2015


def find(folder: Path, pattern: str) -> Path:
    found = sorted(p for ext in (".json", ".json.gz") for p in folder.glob(pattern + ext))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"{folder}: need exactly one {pattern}.json[.gz] file, found {names}")
    return found[0]


def required(path: Path, lineno: int, row: dict, name: str):
    if name not in row:
        fail_at(path, lineno, f"missing field {name!r}")
    return row[name]


def read_ratings(path: Path) -> tuple[dict[str, list], list[int]]:
    """The rated (rating > 0) interactions as columns, and the line each came from."""
    cols: dict[str, list] = {"user": [], "item": [], "rating": [], TIME_FIELD: []}
    lines = []
    for lineno, row in json_lines(path):
        rating = required(path, lineno, row, "rating")
        if type(rating) is not int or not 0 <= rating <= 5:
            fail_at(path, lineno, f"rating {rating!r} is not a whole number 0-5")
        if rating == 0:
            continue
        cols["user"].append(str(required(path, lineno, row, "user_id")))
        cols["item"].append(str(required(path, lineno, row, "book_id")))
        cols["rating"].append(rating)
        cols[TIME_FIELD].append(required(path, lineno, row, TIME_FIELD))
        lines.append(lineno)
    if not lines:
        raise ValueError(f"{path}: no rated interactions (all ratings are 0 or the file is empty)")
    return cols, lines


def unix_seconds(path: Path, dates: list, lines: list[int]) -> np.ndarray:
    times = pd.to_datetime(
        pd.Series(dates, dtype=object), format=TIME_FORMAT, utc=True, errors="coerce"
    )
    bad = times.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        fail_at(
            path,
            lines[i],
            f"{TIME_FIELD} {dates[i]!r} is not like 'Tue Nov 17 11:37:35 -0800 2015'",
        )
    return times.dt.as_unit("s").astype("int64").to_numpy()


def read_titles(path: Path, wanted: set[str]) -> dict[str, str]:
    titles: dict[str, str] = {}
    for lineno, row in json_lines(path):
        book = str(required(path, lineno, row, "book_id"))
        if book not in wanted or book in titles:
            continue
        title = required(path, lineno, row, "title")
        if not isinstance(title, str) or not title.strip():
            fail_at(path, lineno, f"book_id {book} has no title ({title!r})")
        titles[book] = title
    return titles


def load_goodreads(raw: str | Path | None = None) -> Interactions:
    if raw is None or not Path(raw).is_dir():
        raise ValueError(
            f"goodreads needs --raw DIR holding {INTERACTIONS}.json[.gz] and {BOOKS}.json[.gz]"
        )
    interactions, books = find(Path(raw), INTERACTIONS), find(Path(raw), BOOKS)
    cols, lines = read_ratings(interactions)
    cols["timestamp"] = unix_seconds(interactions, cols.pop(TIME_FIELD), lines)
    titles = read_titles(books, set(cols["item"]))
    missing = [i for i, book in enumerate(cols["item"]) if book not in titles]
    if missing:
        first = missing[0]
        fail_at(interactions, lines[first], f"book_id {cols['item'][first]} is not in {books.name}")
    frame = pd.DataFrame(cols)
    frame["rating"] = frame["rating"].astype(float)
    frame["title"] = frame["item"].map(titles)
    return Interactions(frame=frame, kind=BOOK, files=[interactions, books])
