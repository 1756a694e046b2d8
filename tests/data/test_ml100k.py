"""The ml-100k loader (RecBole atomic files): prompts by hand, errors, the real files."""

from __future__ import annotations

import importlib.util

import pytest
import tiny_causal
from tiny_causal import write_ml100k

from e2urec.data import Protocol
from e2urec.data.protocol import build_samples
from e2urec.data.sources import load as load_data

one_thread = tiny_causal.one_thread


def test_ml100k_prompt_by_hand(tmp_path):
    raw = write_ml100k(
        tmp_path / "raw",
        users=[(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043")],
        items=[
            (10, "Toy Story", 1995, "Animation"),
            (20, "Usual Suspects, The", 1995, "Crime Thriller"),
            (30, "unkonwn", "unkonwn", "unknown"),
            (40, "Misérables, Les", 1995, "Drama"),
        ],
        ratings=[
            (1, 10, 5, 100),
            (1, 20, 2, 200),
            (1, 30, 4, 300),
            (2, 40, 1, 150),
            (2, 10, 3, 250),
            (2, 20, 5, 350),
        ],
    )
    data = load_data("ml-100k", raw)
    first = data.frame.iloc[0]
    assert tuple(first[["user", "item", "rating", "timestamp"]]) == ("1", "10", 5.0, 100)
    assert (first.gender, first.age, first.job) == ("male", "24", "technician")
    assert set(data.frame.title) == {
        "Toy Story (1995)",
        "Usual Suspects, The (1995)",
        "Movie 30",
        "Misérables, Les (1995)",
    }
    samples, _ = build_samples(data, Protocol(history=2, min_history=2, last=3))
    he = next(s for s in samples if s.user == "1")
    assert he.input == (
        "The user is a male. His job is technician. His age is 24.\n"
        "He watched the following movies in order in the past, and rated them:\n"
        "['0. Toy Story (1995) (5 stars)', '1. Usual Suspects, The (1995) (2 stars)']\n"
        "Based on the movies he has watched, deduce if he will like the movie ***Movie 30***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )
    assert he.output == "Yes."
    she = next(s for s in samples if s.user == "2")
    assert she.input.startswith("The user is a female. Her job is other. Her age is 53.\nShe ")
    assert "['0. Misérables, Les (1995) (1 star)', '1. Toy Story (1995) (3 stars)']" in she.input
    assert she.output == "Yes."


def test_ml100k_errors(tmp_path, monkeypatch):
    raw = write_ml100k(
        tmp_path / "raw",
        users=[(1, 24, "M", "technician", "85711")],
        items=[(10, "Toy Story", 1995, "Animation")],
        ratings=[(1, 10, 5, 100), (1, 10, "six", 200)],
    )
    with pytest.raises(ValueError, match=r"ml-100k.inter, line 3: rating 'six'"):
        load_data("ml-100k", raw)
    (raw / "ml-100k.user").unlink()
    with pytest.raises(ValueError, match="file\\(s\\) not found: .*ml-100k.user"):
        load_data("ml-100k", raw)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_data("ml-100k")


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed")
def test_ml100k_from_recbole():
    data = load_data("ml-100k")
    assert len(data.frame) == 100_000 and data.frame.user.nunique() == 943
    first = data.frame.iloc[0]  # the file's first row: user 196 rates Kolya
    assert tuple(first[["user", "item", "title"]]) == ("196", "242", "Kolya (1996)")
    user1 = data.frame[data.frame.user == "1"].iloc[0]
    assert (user1.gender, user1.age, user1.job) == ("male", "24", "technician")
