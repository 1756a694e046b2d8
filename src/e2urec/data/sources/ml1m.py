"""MovieLens 1M exactly as GroupLens publishes it: a folder with users.dat, movies.dat, ratings.dat.

Fields are separated by "::". users.dat and ratings.dat are plain ASCII (read as UTF-8);
movies.dat is ISO-8859-1. Titles are kept as written ("Toy Story (1995)": the year is part of it).
"""

from __future__ import annotations

from pathlib import Path

from e2urec.data.prompt import MOVIE
from e2urec.data.sources.base import Interactions
from e2urec.data.sources.engine import (
    Check,
    first_duplicate,
    ingest,
    line_blocks,
    literal,
    quoted,
    whole,
)

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
FIELDS = "SELECT n, string_split(line, '::') AS f FROM block"


def shape(names: tuple[str, ...]) -> Check:
    n = len(names)
    return f"len(f) != {n}", f"'expected {n} fields ({'::'.join(names)}), found ' || len(f)"


def whole_number(i: int, name: str) -> Check:
    return (
        f"NOT {whole(f'f[{i}]')}",
        f"'{name} ' || {quoted(f'f[{i}]')} || ' is not a whole number'",
    )


def coded(i: int, names: dict, field: str) -> tuple[Check, str]:
    """The check that f[i] is one of the codes, and the SQL for its name."""
    code = f"TRY_CAST(f[{i}] AS BIGINT)"
    listed = ", ".join(map(str, names))
    check = (
        f"{code} NOT IN ({listed})",
        f"'{field} ' || {code} || ' is not one of the codes {listed}'",
    )
    cases = " ".join(f"WHEN {k} THEN {literal(v)}" for k, v in names.items())
    return check, f"CASE {code} {cases} END"


def load_table(db, path: Path, encoding: str, checks: list[Check], insert: str) -> None:
    ingest(db, path, line_blocks(path, encoding), FIELDS, checks, insert)
    table = insert.split()[2]
    if db.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0:
        raise ValueError(f"{path}: empty file")


def read_users(db, path: Path) -> None:
    """Table users(n, id, gender, age, job) with the names of the codes."""
    age, age_name = coded(3, AGES, "Age")
    job, job_name = coded(4, JOBS, "Occupation")
    checks = [
        shape(("UserID", "Gender", "Age", "Occupation", "Zip-code")),
        whole_number(1, "UserID"),
        ("f[2] NOT IN ('M', 'F')", f"'Gender ' || {quoted('f[2]')} || ' is not M or F'"),
        whole_number(3, "Age"),
        age,
        whole_number(4, "Occupation"),
        job,
    ]
    db.execute(
        "CREATE OR REPLACE TABLE users (n BIGINT, id BIGINT, gender TEXT, age TEXT, job TEXT)"
    )
    gender = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in GENDERS.items())
    load_table(
        db, path, "utf-8", checks,
        f"INSERT INTO users SELECT n, CAST(f[1] AS BIGINT), CASE f[2] {gender} END, {age_name}, "
        f"{job_name} FROM {{rows}}",
    )  # fmt: skip
    first_duplicate(db, path, "users", "id", "UserID")


def read_movies(db, path: Path) -> None:
    """Table movies(n, id, title)."""
    checks = [shape(("MovieID", "Title", "Genres")), whole_number(1, "MovieID")]
    db.execute("CREATE OR REPLACE TABLE movies (n BIGINT, id BIGINT, title TEXT)")
    insert = "INSERT INTO movies SELECT n, CAST(f[1] AS BIGINT), f[2] FROM {rows}"
    load_table(db, path, "iso-8859-1", checks, insert)
    first_duplicate(db, path, "movies", "id", "MovieID")


def read_ratings(db, path: Path) -> None:
    """Table ratings(seq, user_id, movie_id, rating, timestamp); seq is the line."""
    fields = ("UserID", "MovieID", "Rating", "Timestamp")
    lo, hi = STARS
    user, movie = "TRY_CAST(f[1] AS BIGINT)", "TRY_CAST(f[2] AS BIGINT)"
    checks = [
        shape(fields),
        *(whole_number(i, name) for i, name in enumerate(fields, 1)),
        (f"{user} NOT IN (SELECT id FROM users)", f"'UserID ' || {user} || ' is not in users.dat'"),
        (
            f"{movie} NOT IN (SELECT id FROM movies)",
            f"'MovieID ' || {movie} || ' is not in movies.dat'",
        ),
        (
            f"TRY_CAST(f[3] AS BIGINT) NOT BETWEEN {lo} AND {hi}",
            f"'Rating ' || TRY_CAST(f[3] AS BIGINT) || ' is outside {lo}-{hi}'",
        ),
    ]
    db.execute(
        "CREATE OR REPLACE TABLE ratings "
        '(seq BIGINT, user_id BIGINT, movie_id BIGINT, rating DOUBLE, "timestamp" BIGINT)'
    )
    insert = (
        "INSERT INTO ratings SELECT n, CAST(f[1] AS BIGINT), CAST(f[2] AS BIGINT), "
        "CAST(f[3] AS DOUBLE), CAST(f[4] AS BIGINT) FROM {rows}"
    )
    load_table(db, path, "utf-8", checks, insert)


def load_ml1m(raw: str | Path | None = None, db=None) -> Interactions:
    if raw is None:
        raise ValueError(f"ml-1m needs --raw: the folder holding {', '.join(FILES)}")
    paths = [Path(raw) / name for name in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"ml-1m: file(s) not found: {', '.join(missing)}")
    data = Interactions(kind=MOVIE, files=paths, db=db)
    read_users(data.db, paths[0])
    read_movies(data.db, paths[1])
    read_ratings(data.db, paths[2])
    data.db.execute(
        'CREATE OR REPLACE VIEW interactions AS SELECT r.seq, CAST(r.user_id AS TEXT) AS "user", '
        'CAST(r.movie_id AS TEXT) AS item, r.rating, r."timestamp", m.title, u.gender, u.age, '
        "u.job FROM ratings r JOIN movies m ON m.id = r.movie_id JOIN users u ON u.id = r.user_id"
    )
    return data
