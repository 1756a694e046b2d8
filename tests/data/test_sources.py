"""Real data formats: ML-1M .dat files, GoodReads JSON Lines, a CSV/Parquet log.

The expected prompts are written out by hand from the tiny inputs, not produced by the builder.
"""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime, timezone

import pandas as pd
import pytest

from e2urec.cli import main
from e2urec.data import Protocol, load_splits, prepare
from e2urec.data.protocol import build_samples
from e2urec.data.sources import engine, load

SMALL = Protocol(history=2, min_history=1, last=100)

# --- ML-1M --------------------------------------------------------------------------------

USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n"
MOVIES = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
    "3::Grumpier Old Men (1995)::Comedy|Romance\n"
    "4::Waiting to Exhale (1995)::Comedy|Drama\n"
    "6::Heat (1995)::Action|Crime|Thriller\n"
    "7::Sabrina (1995)::Comedy|Romance\n"
    "8::Misérables, Les (1995)::Drama|War\n"
)
# Sorted by (time, user, item): user 2 rates 6 and 7 in the same second, 6 first.
RATINGS = (
    "1::1::5::100\n"
    "1::2::3::200\n"
    "1::3::1::300\n"
    "1::8::4::400\n"
    "2::7::2::150\n"
    "2::6::4::150\n"
    "2::8::5::250\n"
    "3::1::2::50\n"
    "3::4::4::500\n"
)

NOTE = (
    "Note that more stars the user rated the movie, the user liked the movie more.\n"
    "You should ONLY tell me yes or no."
)
EXPECTED_ML1M = {
    ("1", "8"): (
        "The user is a female. Her job is K-12 student. Her age is under 18.\n"
        "She watched the following movies in order in the past, and rated them:\n"
        "['0. Jumanji (1995) (3 stars)', '1. Grumpier Old Men (1995) (1 star)']\n"
        "Based on the movies she has watched, deduce if she will like the movie "
        "***Misérables, Les (1995)***.\n" + NOTE,
        "Yes.",
    ),
    ("2", "8"): (
        "The user is a male. His job is self-employed. His age is above 56.\n"
        "He watched the following movies in order in the past, and rated them:\n"
        "['0. Heat (1995) (4 stars)', '1. Sabrina (1995) (2 stars)']\n"
        "Based on the movies he has watched, deduce if he will like the movie "
        "***Misérables, Les (1995)***.\n" + NOTE,
        "Yes.",
    ),
    ("1", "2"): (
        "The user is a female. Her job is K-12 student. Her age is under 18.\n"
        "She watched the following movies in order in the past, and rated them:\n"
        "['0. Toy Story (1995) (5 stars)']\n"
        "Based on the movies she has watched, deduce if she will like the movie "
        "***Jumanji (1995)***.\n" + NOTE,
        "No.",
    ),
    ("3", "4"): (
        "The user is a male. His job is scientist. His age is 25-34.\n"
        "He watched the following movies in order in the past, and rated them:\n"
        "['0. Toy Story (1995) (2 stars)']\n"
        "Based on the movies he has watched, deduce if he will like the movie "
        "***Waiting to Exhale (1995)***.\n" + NOTE,
        "Yes.",
    ),
}


def write_ml1m(folder, users=USERS, movies=MOVIES, ratings=RATINGS):
    folder.mkdir(exist_ok=True)
    for name, text in (("users.dat", users), ("movies.dat", movies), ("ratings.dat", ratings)):
        data = text if isinstance(text, bytes) else text.encode("iso-8859-1")
        (folder / name).write_bytes(data)
    return folder


def samples_by_key(out):
    splits = load_splits(out)
    return {(s.user, s.item): s for name in ("train", "valid", "test") for s in splits[name]}


def test_ml1m_prompts_are_the_papers_template(tmp_path):
    manifest = prepare(
        tmp_path / "out", dataset="ml-1m", raw=write_ml1m(tmp_path / "raw"), protocol=SMALL
    )
    samples = samples_by_key(tmp_path / "out")
    # user 2's item 7 (pos 1), user 1's 2/3/8, user 2's 8, user 3's 4: six ratings with history
    assert manifest["candidates"] == 6
    counts = manifest["counts"]
    assert (counts["train"], counts["valid"], counts["test"]) == (3, 1, 2)
    assert counts["retain"] + counts["forget"] == 3 and len(manifest["forgotten_users"]) == 1
    for key, (prompt, output) in EXPECTED_ML1M.items():
        assert samples[key].input == prompt
        assert samples[key].output == output
    assert samples[("1", "8")].timestamp == 400 and samples[("1", "8")].rating == 4.0


def test_ml1m_age_and_occupation_names(tmp_path):
    ages = [1, 18, 25, 35, 45, 50, 56]
    users = "".join(f"{j + 1}::M::{ages[j % 7]}::{j}::00000\n" for j in range(21))
    ratings = "".join(f"{j + 1}::1::3::{j}\n" for j in range(21))
    data = load("ml-1m", write_ml1m(tmp_path, users=users, ratings=ratings))
    got = data.frame.set_index("user")
    jobs = [
        "other or not specified", "academic/educator", "artist", "clerical/admin",
        "college/grad student", "customer service", "doctor/health care", "executive/managerial",
        "farmer", "homemaker", "K-12 student", "lawyer", "programmer", "retired",
        "sales/marketing", "scientist", "self-employed", "technician/engineer",
        "tradesman/craftsman", "unemployed", "writer",
    ]  # fmt: skip
    age_names = ["under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "above 56"]
    assert list(got.loc[[str(j + 1) for j in range(21)], "job"]) == jobs
    assert list(got.loc[[str(j + 1) for j in range(7)], "age"]) == age_names
    assert set(got["gender"]) == {"male"}


def replace_line(text: str, number: int, line: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[number - 1] = line
    return "".join(lines)


MALFORMED_ML1M = [
    (
        "ratings.dat",
        3,
        "1::3::1\n",
        "line 3: expected 4 fields (UserID::MovieID::Rating::Timestamp), found 3",
    ),
    ("ratings.dat", 4, "1::8::4::400::9\n", "line 4: expected 4 fields"),
    ("ratings.dat", 2, "1::2::6::200\n", "line 2: Rating 6 is outside 1-5"),
    ("ratings.dat", 2, "1::2::0::200\n", "line 2: Rating 0 is outside 1-5"),
    ("ratings.dat", 2, "1::2::3.5::200\n", "line 2: Rating '3.5' is not a whole number"),
    ("ratings.dat", 5, "9::7::2::150\n", "line 5: UserID 9 is not in users.dat"),
    ("ratings.dat", 5, "2::5::2::150\n", "line 5: MovieID 5 is not in movies.dat"),
    ("ratings.dat", 8, "3::1::2::soon\n", "line 8: Timestamp 'soon' is not a whole number"),
    ("users.dat", 2, "2::X::56::16::70072\n", "line 2: Gender 'X' is not M or F"),
    ("users.dat", 3, "3::M::30::15::55117\n", "line 3: Age 30 is not one of the codes"),
    ("users.dat", 1, "1::F::1::21::48067\n", "line 1: Occupation 21 is not one of the codes"),
    ("users.dat", 3, "2::M::25::15::55117\n", "line 3: UserID 2 appears a second time"),
    ("movies.dat", 2, "2::Jumanji (1995)\n", "line 2: expected 3 fields"),
]


@pytest.mark.parametrize(("name", "number", "line", "message"), MALFORMED_ML1M)
def test_ml1m_malformed_line_is_named_and_nothing_written(tmp_path, name, number, line, message):
    texts = {"users": USERS, "movies": MOVIES, "ratings": RATINGS}
    key = name.removesuffix(".dat")
    texts[key] = replace_line(texts[key], number, line)
    raw = write_ml1m(tmp_path / "raw", **texts)
    with pytest.raises(ValueError, match=re.escape(f"{raw / name}, {message}")):
        prepare(tmp_path / "out", dataset="ml-1m", raw=raw, protocol=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize("name", ["users.dat", "ratings.dat"])
def test_ml1m_undecodable_byte(tmp_path, name):
    good = {"users": USERS, "ratings": RATINGS}[name.removesuffix(".dat")].encode()
    lines = good.splitlines(keepends=True)
    lines[1] = lines[1].replace(b"::", b"\xff::", 1)
    raw = write_ml1m(tmp_path / "raw", **{name.removesuffix(".dat"): b"".join(lines)})
    with pytest.raises(
        ValueError, match=re.escape(f"{raw / name}, line 2: byte 0xff is not valid utf-8")
    ):
        prepare(tmp_path / "out", dataset="ml-1m", raw=raw, protocol=SMALL)
    assert not (tmp_path / "out").exists()


def test_ml1m_failure_keeps_the_previous_output(tmp_path):
    raw = write_ml1m(tmp_path / "raw")
    prepare(tmp_path / "out", dataset="ml-1m", raw=raw, protocol=SMALL)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write_ml1m(raw, ratings=replace_line(RATINGS, 2, "1::2::9::200\n"))
    with pytest.raises(ValueError, match="Rating 9"):
        prepare(tmp_path / "out", dataset="ml-1m", raw=raw, protocol=SMALL)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


# --- GoodReads ----------------------------------------------------------------------------


def goodreads_row(user, book, rating, date):
    return {
        "user_id": user,
        "book_id": book,
        "review_id": f"r{user}{book}",
        "is_read": rating > 0,
        "rating": rating,
        "review_text_incomplete": "",
        "date_added": "Mon Jan 01 00:00:00 -0800 2001",
        "date_updated": date,
        "read_at": "",
        "started_at": "",
    }


GR_INTERACTIONS = [
    goodreads_row("u1", "10", 5, "Tue Nov 17 11:37:35 -0800 2015"),
    goodreads_row("u1", "11", 0, "Wed Nov 18 11:37:35 -0800 2015"),  # shelved, not rated
    goodreads_row("u1", "12", 2, "Thu Nov 19 11:37:35 -0800 2015"),
    goodreads_row("u2", "12", 4, "Thu Nov 19 20:00:00 +0100 2015"),
    goodreads_row("u1", "13", 4, "Fri Nov 20 11:37:35 -0800 2015"),
    goodreads_row("u2", "10", 1, "Sat Nov 21 09:00:00 +0000 2015"),
    goodreads_row("u2", "13", 3, "Sun Nov 22 09:00:00 +0000 2015"),
    goodreads_row("u2", "11", 2, "Mon Nov 23 09:00:00 +0000 2015"),
]
GR_BOOKS = [
    {"book_id": "10", "title": "The Hobbit", "title_without_series": "The Hobbit", "isbn": ""},
    {"book_id": "11", "title": "Unrated Book"},
    {"book_id": "12", "title": "Dune (Dune #1)"},
    {"book_id": "13", "title": "Émile"},
    {"book_id": "99", "title": "Nobody Read This"},
]


def write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def write_goodreads(folder, interactions=GR_INTERACTIONS, books=GR_BOOKS):
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "goodreads_interactions_comics_graphic.json.gz", interactions, gz=True)
    write_jsonl(folder / "goodreads_books_comics_graphic.json", books)
    (folder / "goodreads_book_authors.json").write_text("{}\n")  # not a books file
    return folder


BOOK_NOTE = (
    "Note that more stars the user rated the book, the user liked the book more.\n"
    "You should ONLY tell me yes or no."
)


def test_goodreads_drops_rating_zero_and_joins_titles(tmp_path):
    data = load("goodreads", write_goodreads(tmp_path))
    frame = data.frame
    assert list(zip(frame["user"], frame["item"])) == [
        ("u1", "10"), ("u1", "12"), ("u2", "12"), ("u1", "13"), ("u2", "10"), ("u2", "13"),
        ("u2", "11"),
    ]  # fmt: skip
    assert list(frame["title"]) == [
        "The Hobbit", "Dune (Dune #1)", "Dune (Dune #1)", "Émile", "The Hobbit", "Émile",
        "Unrated Book",
    ]  # fmt: skip
    first = datetime(2015, 11, 17, 19, 37, 35, tzinfo=timezone.utc).timestamp()
    assert frame["timestamp"].iloc[0] == first
    assert (
        frame["timestamp"].iloc[2] == datetime(2015, 11, 19, 19, 0, tzinfo=timezone.utc).timestamp()
    )
    assert not {"gender", "age", "job"} & set(frame.columns)


def test_goodreads_prompt(tmp_path):
    prepare(
        tmp_path / "out", dataset="goodreads", raw=write_goodreads(tmp_path / "raw"), protocol=SMALL
    )
    sample = samples_by_key(tmp_path / "out")[("u1", "13")]
    # u1's Dune (Thu 19:37 UTC) comes after u2's Dune (Thu 19:00 UTC); both precede Fri.
    assert sample.input == (
        "The user read the following books in order in the past, and rated them:\n"
        "['0. The Hobbit (5 stars)', '1. Dune (Dune #1) (2 stars)']\n"
        "Based on the books the user has read, deduce if the user will like the book ***Émile***.\n"
        + BOOK_NOTE
    )
    assert sample.output == "Yes."


def changed_at(number, **changes):
    """The interactions up to line `number`, that line changed (None removes a field)."""
    last = {k: v for k, v in {**GR_INTERACTIONS[number - 1], **changes}.items() if v is not None}
    return [*GR_INTERACTIONS[: number - 1], last]


@pytest.mark.parametrize(
    ("number", "changes", "message"),
    [
        (4, {"rating": 7}, "line 4: rating 7 is not a whole number 0-5"),
        (2, {"rating": "4"}, "line 2: rating '4' is not a whole number 0-5"),
        (3, {"date_updated": "yesterday"}, "line 3: date_updated 'yesterday' is not like"),
        (6, {"book_id": "77"}, "line 6: book_id 77 is not in goodreads_books_comics_graphic.json"),
        (1, {"user_id": None}, "line 1: missing field 'user_id'"),
    ],
)
def test_goodreads_malformed(tmp_path, number, changes, message):
    raw = write_goodreads(tmp_path / "raw", changed_at(number, **changes))
    path = raw / "goodreads_interactions_comics_graphic.json.gz"
    with pytest.raises(ValueError, match=re.escape(f"{path}, {message}")):
        prepare(tmp_path / "out", dataset="goodreads", raw=raw, protocol=SMALL)
    assert not (tmp_path / "out").exists()


def test_goodreads_bad_json_and_bad_byte(tmp_path):
    raw = write_goodreads(tmp_path)
    books = raw / "goodreads_books_comics_graphic.json"
    books.write_bytes(books.read_bytes().replace(b'"Dune', b'"\xffDune'))
    with pytest.raises(ValueError, match=re.escape(f"{books}, line 3: not valid JSON")):
        load("goodreads", raw)
    books.write_bytes(b'{"book_id": "10", "title": "The Hobbit"}\n{"book_id": \n')
    with pytest.raises(ValueError, match=re.escape(f"{books}, line 2: not valid JSON")):
        load("goodreads", raw)


def test_goodreads_refuses_to_guess_between_files(tmp_path):
    raw = write_goodreads(tmp_path)
    write_jsonl(raw / "goodreads_books.json.gz", GR_BOOKS, gz=True)
    with pytest.raises(
        ValueError, match="goodreads_books.json.gz, goodreads_books_comics_graphic.json"
    ):
        load("goodreads", raw)


# --- a CSV / Parquet log ------------------------------------------------------------------

LOG = (
    "uid,iid,stars,when,gender,age,job\n"
    "a,m1,4,2020-01-01T00:00:00Z,female,30,nurse\n"
    "a,m2,2.5,2020-01-01T01:00:00+01:00,female,30,nurse\n"  # same instant as the row above
    "b,m1,5,1577836900,,,\n"
    "a,m3,5,2020-01-02 00:00:00,female,30,nurse\n"
    "b,m3,1,2020-01-03,,,\n"
    "c,m2,3,2020-01-04T00:00:00-05:00,male,,\n"
    "c,m1,4,1578200000,male,,\n"
    "c,m3,5,2020-01-06T08:26:40.750Z,male,,\n"  # 1578299200.75 s: the fraction is dropped
)
TITLES = "item,title\nm1,Alien (1979)\nm2,Brazil (1985)\n"


def write_log(tmp_path, log=LOG, titles=TITLES):
    (tmp_path / "log.csv").write_text(log)
    (tmp_path / "titles.csv").write_text(titles)
    return tmp_path / "log.csv", tmp_path / "titles.csv"


COLUMNS = {"user_col": "uid", "item_col": "iid", "rating_col": "stars", "time_col": "when"}


def test_interactions_csv_columns_titles_and_iso_times(tmp_path):
    log, titles = write_log(tmp_path)
    frame = load("interactions", log, titles=titles, **COLUMNS).frame
    assert list(frame["timestamp"]) == [
        1577836800, 1577836800, 1577836900, 1577923200, 1578009600, 1578114000, 1578200000,
        1578299200,
    ]  # fmt: skip
    assert list(frame["title"])[:5] == ["Alien (1979)", "Brazil (1985)", "Alien (1979)", "m3", "m3"]
    assert list(frame["rating"])[:5] == [4.0, 2.5, 5.0, 5.0, 1.0]
    assert pd.isna(frame["gender"].iloc[2]) and frame["job"].iloc[0] == "nurse"


def test_interactions_prompts_with_and_without_profile(tmp_path):
    log, titles = write_log(tmp_path)
    prepare(
        tmp_path / "out", dataset="interactions", raw=log, protocol=SMALL, titles=titles, **COLUMNS
    )
    samples = samples_by_key(tmp_path / "out")
    # a's m1 and m2 share a second; the tie goes to item order, so m1 is first.
    assert samples[("a", "m3")].input == (
        "The user is a female. Her job is nurse. Her age is 30.\n"
        "She watched the following movies in order in the past, and rated them:\n"
        "['0. Alien (1979) (4 stars)', '1. Brazil (1985) (2.5 stars)']\n"
        "Based on the movies she has watched, deduce if she will like the movie ***m3***.\n" + NOTE
    )
    assert samples[("b", "m3")].input == (
        "The user watched the following movies in order in the past, and rated them:\n"
        "['0. Alien (1979) (5 stars)']\n"
        "Based on the movies the user has watched, deduce if the user will like the movie "
        "***m3***.\n" + NOTE
    )
    assert samples[("b", "m3")].output == "No."


def test_interactions_parquet(tmp_path):
    frame = pd.DataFrame(
        {
            "user": [1, 1, 2, 1],
            "item": [10, 11, 10, 12],
            "rating": [4, 5, 3, 1],
            "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"]),
        }
    )
    frame.to_parquet(tmp_path / "log.parquet")
    got = load("interactions", tmp_path / "log.parquet").frame
    assert list(got["user"]) == ["1", "1", "2", "1"] and list(got["title"]) == [
        "10",
        "11",
        "10",
        "12",
    ]
    assert list(got["timestamp"]) == [1577836800, 1577923200, 1578009600, 1578096000]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a,m2,good,1577836800,female,30,nurse\n", "line 3: stars 'good' is not a number"),
        (
            "a,m2,4,next tuesday,female,30,nurse\n",
            "line 3: when 'next tuesday' is not whole unix seconds",
        ),
        (
            "a,m2,4,1577836800.5,female,30,nurse\n",
            "line 3: when '1577836800.5' is not whole unix seconds",
        ),
        ("a,m2,4,1577836800,M,30,nurse\n", "line 3: gender 'M' is not male or female"),
        (",m2,4,1577836800,,,\n", "line 3: uid is empty"),
    ],
)
def test_interactions_malformed(tmp_path, line, message):
    log, titles = write_log(tmp_path, log=replace_line(LOG, 3, line))
    with pytest.raises(ValueError, match=re.escape(f"{log}, {message}")):
        prepare(tmp_path / "out", dataset="interactions", raw=log, protocol=SMALL, **COLUMNS)
    assert not (tmp_path / "out").exists()


def test_interactions_missing_column_and_undecodable_byte(tmp_path):
    log, _ = write_log(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{log}: no column 'user' (columns: uid, iid")):
        load("interactions", log)
    log.write_bytes(LOG.encode().replace(b"nurse\nb", b"nurs\xe9\nb"))
    with pytest.raises(ValueError, match=re.escape(f"{log}, line 3: byte 0xe9 is not valid utf-8")):
        load("interactions", log, **COLUMNS)


# --- command line -------------------------------------------------------------------------


def test_cli_prepares_an_interactions_log(tmp_path, capsys):
    log, titles = write_log(tmp_path)
    out = tmp_path / "out"
    flags = [
        "--user-col",
        "uid",
        "--item-col",
        "iid",
        "--rating-col",
        "stars",
        "--time-col",
        "when",
    ]
    argv = ["prepare", "--dataset", "interactions", "--raw", str(log), "--out", str(out)]
    assert (
        main([*argv, *flags, "--titles", str(titles), "--min-history", "1", "--threshold", "4"])
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protocol"]["threshold"] == 4.0
    assert [str(p) for p in manifest["raw"]] == [str(log), str(titles)]
    samples = samples_by_key(out)
    assert samples[("a", "m3")].output == "Yes."
    assert samples[("c", "m1")].output == "No."  # rated 4: Yes at the default threshold of 3
    assert "wrote" in capsys.readouterr().out


def test_cli_reports_a_malformed_file_and_writes_nothing(tmp_path, capsys):
    raw = write_ml1m(tmp_path / "raw", ratings=replace_line(RATINGS, 6, "2::6::4\n"))
    out = tmp_path / "out"
    assert main(["prepare", "--dataset", "ml-1m", "--raw", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{raw / 'ratings.dat'}, line 6: expected 4 fields" in err
    assert not out.exists()


def test_cli_refuses_an_option_of_another_loader(tmp_path, capsys):
    raw = write_ml1m(tmp_path / "raw")
    argv = ["prepare", "--dataset", "ml-1m", "--raw", str(raw), "--out", str(tmp_path / "o")]
    assert main([*argv, "--titles", "t.csv"]) == 2
    assert "ml-1m: unknown option(s) titles" in capsys.readouterr().err


# --- the out-of-core engine ---------------------------------------------------------------


def prompts(out):
    return {key: (s.input, s.output) for key, s in samples_by_key(out).items()}


def test_small_blocks_give_the_same_samples_and_line_numbers(tmp_path, monkeypatch):
    """Files cut into many blocks: the same prompts, and errors still name the right line."""
    raw = write_ml1m(tmp_path / "raw")
    prepare(tmp_path / "whole", dataset="ml-1m", raw=raw, protocol=SMALL)
    monkeypatch.setattr(engine, "BLOCK_BYTES", 16)  # one or two lines a block
    sizes, real_split = [], engine.split_lines
    monkeypatch.setattr(
        engine, "split_lines", lambda *a: sizes.append(len(out := real_split(*a))) or out
    )
    prepare(tmp_path / "cut", dataset="ml-1m", raw=raw, protocol=SMALL)
    assert len(sizes) > 10 and max(sizes) <= 2  # read a block at a time
    assert prompts(tmp_path / "cut") == prompts(tmp_path / "whole")
    write_ml1m(raw, ratings=replace_line(RATINGS, 8, "3::1::2::soon\n"))
    with pytest.raises(ValueError, match=re.escape(f"{raw / 'ratings.dat'}, line 8: Timestamp")):
        prepare(tmp_path / "bad", dataset="ml-1m", raw=raw, protocol=SMALL)
    gr = write_goodreads(tmp_path / "gr")
    books = gr / "goodreads_books_comics_graphic.json"
    books.write_bytes(books.read_bytes().replace(b'"Dune', b'"\xffDune'))
    with pytest.raises(ValueError, match=re.escape(f"{books}, line 3: not valid JSON (byte 0xff")):
        load("goodreads", gr)


def test_goodreads_blank_lines_crlf_and_a_line_that_is_not_an_object(tmp_path):
    raw = write_goodreads(tmp_path)
    path = raw / "goodreads_interactions_comics_graphic.json.gz"
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    path.write_bytes(gzip.compress(b"\r\n".join([lines[0], b"", b"  ", *lines[1:]])))
    assert len(load("goodreads", raw).frame) == 7  # blank lines skipped, CRLF read
    path.write_bytes(gzip.compress(b"\n".join([lines[0], b'["u1", "10"]', *lines[1:]])))
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: expected a JSON object")):
        load("goodreads", raw)


def test_interactions_gzipped_csv(tmp_path):
    log, titles = write_log(tmp_path)
    packed = tmp_path / "log.csv.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    plain = load("interactions", log, titles=titles, **COLUMNS).frame
    pd.testing.assert_frame_equal(
        load("interactions", packed, titles=titles, **COLUMNS).frame, plain
    )


def test_memory_limit_is_set_and_the_engine_folder_removed(tmp_path):
    out = tmp_path / "out"
    with engine.workspace(out, "300MB") as db:
        limit = db.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        spill = db.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
        assert limit.startswith("286") and spill.startswith(str(tmp_path / ".out.engine-"))
        assert len(list(tmp_path.glob(".out.engine-*/work.duckdb"))) == 1  # on disk, not in memory
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="memory limit 'lots' is not a size such as 2GB"):
        prepare(out, dataset="ml-1m", raw=write_ml1m(tmp_path / "raw"), memory_limit="lots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_small_memory_limit_gives_the_same_samples(tmp_path):
    raw = write_ml1m(tmp_path / "raw")
    prepare(tmp_path / "roomy", dataset="ml-1m", raw=raw, protocol=SMALL)
    prepare(tmp_path / "tight", dataset="ml-1m", raw=raw, protocol=SMALL, memory_limit="32MB")
    assert prompts(tmp_path / "tight") == prompts(tmp_path / "roomy")


def test_cli_memory_limit(tmp_path, capsys):
    raw = write_ml1m(tmp_path / "raw")
    argv = ["prepare", "--dataset", "ml-1m", "--raw", str(raw), "--min-history", "1"]
    assert main([*argv, "--out", str(tmp_path / "o"), "--memory-limit", "256MB"]) == 0
    assert main([*argv, "--out", str(tmp_path / "p"), "--memory-limit", "256"]) == 2
    assert "memory limit '256' is not a size" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_fractional_ids_tie_break_as_numbers(tmp_path):
    # Same second: item 9.7 before 10.2 (as numbers; as text "10.2" sorts first).
    (tmp_path / "log.csv").write_text(
        "user,item,rating,timestamp\na,10.2,4,100\na,9.7,2,100\na,3,5,200\n"
    )
    data = load("interactions", tmp_path / "log.csv")
    [sample], _ = build_samples(data, Protocol(history=2, min_history=2, last=100))
    assert sample.input.split("\n")[1] == "['0. 9.7 (2 stars)', '1. 10.2 (4 stars)']"
