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

import json
from pathlib import Path

from e2urec.data.prompt import BOOK
from e2urec.data.sources.base import Interactions
from e2urec.data.sources.engine import Check, first_row, ingest, line_blocks, literal, quoted
from e2urec.data.sources.text import fail_at

INTERACTIONS, BOOKS = "goodreads_interactions*", "goodreads_books*"
TIME_FIELD = "date_updated"
TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # Tue Nov 17 11:37:35 -0800 2015
LIKE = "Tue Nov 17 11:37:35 -0800 2015"


def find(folder: Path, pattern: str) -> Path:
    found = sorted(p for ext in (".json", ".json.gz") for p in folder.glob(pattern + ext))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"{folder}: need exactly one {pattern}.json[.gz] file, found {names}")
    return found[0]


def objects(fields: dict[str, str]) -> str:
    """Each non-blank line of `block` as struct j of `fields` (name: type; NULL where missing)."""
    shape = json.dumps(fields)
    # One parse a line; TRY leaves j NULL where the line is not JSON at all. Lines are trimmed
    # (to skip blank ones, to see an object's brace) only where they do not start with a brace.
    bare = "starts_with(line, '{')"
    return (
        f"SELECT n, {bare} OR starts_with(ltrim(line), '{{') AS object, "
        f"TRY(from_json(line, '{shape}')) AS j FROM block "
        f"WHERE {bare} OR trim(line, ' \t\r\n') != ''"
    )


def json_checks(required: tuple[str, ...], where: str = "true") -> list[Check]:
    """JSON objects holding every field of `required` (on the rows where `where` holds)."""
    missing = [(f"({where}) AND j.{f} IS NULL", literal(f"missing field '{f}'")) for f in required]
    if where != "true":
        return missing
    # from_json reads a non-object as an object without fields: tell the two apart here.
    return [("j IS NULL", "'not valid JSON'"), ("NOT object", "'expected a JSON object'"), *missing]


def bad_json(byte: int, encoding: str) -> str:
    return f"not valid JSON (byte 0x{byte:02x} is not valid {encoding})"


def read_ratings(db, path: Path) -> None:
    """Table rated(n, user, item, rating, timestamp): the ratings above 0, n their lines."""
    rating, text = "j.rating", "(j.rating ->> '$')"
    shown = f"CASE json_type({rating}) WHEN 'VARCHAR' THEN {quoted(text)} ELSE {rating}::TEXT END"
    when = f"strptime(j.{TIME_FIELD}, '{TIME_FORMAT}')"
    rated = f"CAST({rating} AS BIGINT) != 0"
    checks = [
        *json_checks(("rating",)),
        (
            f"json_type({rating}) NOT IN ('UBIGINT', 'BIGINT') OR CAST({rating} AS BIGINT) > 5",
            f"'rating ' || {shown} || ' is not a whole number 0-5'",
        ),
        *json_checks(("user_id", "book_id", TIME_FIELD), rated),
        (
            f"{rated} AND try_{when} IS NULL",
            f"'{TIME_FIELD} ' || {quoted(f'j.{TIME_FIELD}')} || {literal(f' is not like {LIKE!r}')}",
        ),
    ]
    db.execute(
        'CREATE OR REPLACE TABLE rated (n BIGINT, "user" TEXT, item TEXT, rating DOUBLE, '
        '"timestamp" BIGINT)'
    )
    ingest(
        db, path, line_blocks(path, "utf-8", bad_json),
        objects({"user_id": "VARCHAR", "book_id": "VARCHAR", "rating": "JSON", TIME_FIELD: "VARCHAR"}),
        checks,
        "INSERT INTO rated SELECT n, j.user_id, j.book_id, "
        f"CAST({rating} AS DOUBLE), CAST(epoch({when}) AS BIGINT) FROM {{rows}} WHERE {rated}",
    )  # fmt: skip
    if db.execute("SELECT count(*) FROM rated").fetchall()[0][0] == 0:
        raise ValueError(f"{path}: no rated interactions (all ratings are 0 or the file is empty)")


def read_titles(db, path: Path) -> None:
    """Table titles(n, item, title): each rated book's first entry, which must have a title."""
    db.execute("CREATE OR REPLACE TABLE books (n BIGINT, item TEXT, title JSON)")
    ingest(
        db, path, line_blocks(path, "utf-8", bad_json),
        objects({"book_id": "VARCHAR", "title": "JSON"}), json_checks(("book_id",)),
        "INSERT INTO books SELECT n, j.book_id, j.title FROM {rows} "
        "WHERE j.book_id IN (SELECT item FROM rated)",
    )  # fmt: skip
    db.execute(
        "CREATE OR REPLACE TABLE titles AS SELECT n, item, title FROM (SELECT *, row_number() "
        "OVER (PARTITION BY item ORDER BY n) AS k FROM books) WHERE k = 1"
    )
    found = first_row(
        db,
        "SELECT n, item, title FROM titles WHERE title IS NULL "
        "OR json_type(title) != 'VARCHAR' OR trim(title ->> '$') = '' ORDER BY n LIMIT 1",
    )
    if found:
        n, book, title = found
        if title is None:
            fail_at(path, n, "missing field 'title'")
        fail_at(path, n, f"book_id {book} has no title ({json.loads(title)!r})")


def load_goodreads(raw: str | Path | None = None, db=None) -> Interactions:
    if raw is None or not Path(raw).is_dir():
        raise ValueError(
            f"goodreads needs --raw DIR holding {INTERACTIONS}.json[.gz] and {BOOKS}.json[.gz]"
        )
    interactions, books = find(Path(raw), INTERACTIONS), find(Path(raw), BOOKS)
    data = Interactions(kind=BOOK, files=[interactions, books], db=db)
    read_ratings(data.db, interactions)
    read_titles(data.db, books)
    missing = first_row(
        data.db,
        "SELECT n, item FROM rated WHERE item NOT IN (SELECT item FROM titles) ORDER BY n LIMIT 1",
    )
    if missing:
        fail_at(interactions, missing[0], f"book_id {missing[1]} is not in {books.name}")
    data.db.execute(
        'CREATE OR REPLACE VIEW interactions AS SELECT r.n AS seq, r."user", r.item, r.rating, '
        "r.\"timestamp\", t.title ->> '$' AS title FROM rated r JOIN titles t USING (item)"
    )
    return data
