"""Any interaction log: a CSV or Parquet file with one rating per row, gzipped or not.

Columns user, item, rating and timestamp are required; other names are given with `user_col`,
`item_col`, `rating_col`, `time_col`. Timestamps are whole unix seconds or ISO 8601 date-times
("2015-11-17T11:37:35-08:00"; one without a zone is read as UTC; fractions of a second are
dropped). Columns named gender ("male" or "female"), age and job, where present, fill the prompt's
profile. Titles come from an optional CSV `titles` with columns item,title; an item without one
is called by its id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from e2urec.data.sources.base import PROFILE, Interactions
from e2urec.data.sources.engine import Check, first_duplicate, ingest, line_blocks, quoted

GENDERS = ("male", "female")
BATCH_ROWS = 1 << 20


class Table:
    """A CSV or Parquet file read in blocks, and how its rows are counted in messages."""

    def __init__(self, path: Path):
        self.path = path
        self.parquet = path.name.endswith(".parquet")
        self.first, self.unit = (1, "row") if self.parquet else (2, "line")
        self.schema = self.reading(
            lambda: pq.ParquetFile(path).schema_arrow if self.parquet else self.reader().schema
        )

    def reading(self, action):
        """Arrow's errors as ValueErrors naming the file (and the line of a bad byte)."""
        try:
            return action()
        except (OSError, pa.ArrowException) as err:
            if "UTF8" in str(err):
                for _ in line_blocks(self.path, "utf-8"):  # raises at the bad byte's line
                    pass
            what = "cannot read as Parquet" if self.parquet else "cannot read as CSV"
            raise ValueError(f"{self.path}: {what} ({err})") from None

    def reader(self):
        if self.parquet:
            return pq.ParquetFile(self.path).iter_batches(BATCH_ROWS)
        names = pacsv.open_csv(self.open()).schema.names
        # Text throughout, blank lines kept so that row i stays line i + 2 (they fail as empty).
        return pacsv.open_csv(
            self.open(),
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    def open(self):
        return pa.input_stream(str(self.path), compression="detect")

    def blocks(self) -> Iterator[pa.Table]:
        reader = self.reading(self.reader)
        batches = iter(reader)
        first = self.first
        while (batch := self.reading(lambda: next(batches, None))) is not None:
            n = pa.array(np.arange(first, first + batch.num_rows))
            yield pa.Table.from_batches([batch]).append_column("n", n)
            first += batch.num_rows

    def column(self, name: str) -> str:
        if name not in self.schema.names:
            have = ", ".join(self.schema.names)
            raise ValueError(f"{self.path}: no column {name!r} (columns: {have})")
        return '"' + name.replace('"', '""') + '"'

    def kind(self, name: str) -> str:
        t = self.schema.field(name).type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return "time"
        return "number" if pa.types.is_integer(t) or pa.types.is_floating(t) else "text"

    def ingest(self, db, checks: list[Check], insert: str) -> None:
        ingest(db, self.path, self.blocks(), "SELECT * FROM block", checks, insert, self.unit)


def blank(col: str) -> str:
    return f"({col} IS NULL OR trim(CAST({col} AS TEXT)) = '')"


def shown(col: str) -> str:
    return quoted(f"CAST({col} AS TEXT)")


def ids(table: Table, name: str) -> tuple[str, Check]:
    col = table.column(name)
    return f"CAST({col} AS TEXT)", (blank(col), f"'{name} is empty'")


def ratings(table: Table, name: str) -> tuple[str, Check]:
    col = table.column(name)
    value = f"TRY_CAST({col} AS DOUBLE)"
    bad = f"NOT coalesce(isfinite({value}), false)"
    return value, (bad, f"'{name} ' || {shown(col)} || ' is not a number'")


def seconds(table: Table, name: str) -> tuple[str, Check]:
    """Whole unix seconds (NULL where unreadable); fractions of a second dropped."""
    col, kind = table.column(name), table.kind(name)
    if kind == "time":
        value = f"CAST(floor(epoch({col})) AS BIGINT)"
    elif kind == "number":
        value = f"CASE WHEN {col} = floor({col}) THEN TRY_CAST({col} AS BIGINT) END"
    else:
        text = f"trim({col})"
        iso = f"TRY_CAST(floor(epoch(TRY_CAST({text} AS TIMESTAMPTZ))) AS BIGINT)"
        whole = f"regexp_full_match({text}, '-?[0-9]{{1,18}}')"
        value = f"CASE WHEN {whole} THEN CAST({text} AS BIGINT) ELSE {iso} END"
    message = "' is not whole unix seconds or an ISO 8601 date-time'"
    return value, (f"{value} IS NULL", f"'{name} ' || {shown(col)} || {message}")


def profile(table: Table) -> tuple[list[str], list[str], list[Check]]:
    """The profile columns present, their SQL values (blank: NULL), and the gender check."""
    present = [k for k in PROFILE if k in table.schema.names]
    cols = [table.column(k) for k in present]
    values = [f"CASE WHEN NOT {blank(c)} THEN CAST({c} AS TEXT) END" for c in cols]
    checks = []
    if "gender" in present:
        g = table.column("gender")
        checks.append(
            (
                f"NOT {blank(g)} AND CAST({g} AS TEXT) NOT IN {GENDERS}",
                f"'gender ' || {shown(g)} || ' is not male or female (or empty)'",
            )
        )
    return present, values, checks


def read_log(db, path: Path, columns: dict[str, str]) -> list[str]:
    """Table log(seq, user, item, rating, timestamp, profile...); returns the profile's names."""
    table = Table(path)
    user, item = ids(table, columns["user"]), ids(table, columns["item"])
    rating, time = ratings(table, columns["rating"]), seconds(table, columns["timestamp"])
    present, extra, gender = profile(table)
    db.execute(
        'CREATE OR REPLACE TABLE log (seq BIGINT, "user" TEXT, item TEXT, rating DOUBLE, '
        '"timestamp" BIGINT' + "".join(f", {k} TEXT" for k in present) + ")"
    )
    values = [user[0], item[0], rating[0], time[0], *extra]
    checks = [user[1], item[1], rating[1], time[1], *gender]
    table.ingest(db, checks, f"INSERT INTO log SELECT n, {', '.join(values)} FROM {{rows}}")
    return present


def read_titles(db, path: Path) -> None:
    """Table titles(n, item, title) of the named items; an item may appear once."""
    table = Table(path)
    item, title = ids(table, "item"), table.column("title")
    db.execute("CREATE OR REPLACE TABLE titles (n BIGINT, item TEXT, title TEXT)")
    table.ingest(
        db, [item[1]], f"INSERT INTO titles SELECT n, {item[0]}, CASE WHEN NOT {blank(title)} "
        f"THEN CAST({title} AS TEXT) END FROM {{rows}}",
    )  # fmt: skip
    first_duplicate(db, path, "titles", "item", "item", table.unit)


def load_interactions(
    raw: str | Path | None = None,
    db=None,
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
    data = Interactions(files=files, db=db)
    columns = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
    present = read_log(data.db, files[0], columns)
    if titles:
        read_titles(data.db, files[1])
    else:
        data.db.execute("CREATE OR REPLACE TABLE titles (n BIGINT, item TEXT, title TEXT)")
    data.db.execute(
        'CREATE OR REPLACE VIEW interactions AS SELECT l.seq, l."user", l.item, l.rating, '
        'l."timestamp", coalesce(t.title, l.item) AS title'
        + "".join(f", l.{k}" for k in present)
        + " FROM log l LEFT JOIN titles t ON t.item = l.item AND t.title IS NOT NULL"
    )
    return data
