"""The paper's protocol on hand-made interactions, and the prepared folder's contract."""

from __future__ import annotations

import json
import re
from collections import Counter

import pandas as pd
import pytest

from e2urec.data import Protocol, load_splits, prepare, read_jsonl
from e2urec.data.canaries import is_canary, real, unique
from e2urec.data.protocol import make_splits
from e2urec.data.sources import Interactions, validate


def frame(rows):
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    df["user"], df["item"] = df["user"].astype(str), df["item"].astype(str)
    df["title"] = "Movie " + df["item"]
    return df


def staircase(users=6, per_user=9):
    """User u rates items 0..per_user-1 at times t = 10*i + u, rating alternating 2 and 4."""
    rows = [
        (u, i, 4.0 if i % 2 else 2.0, 10 * i + u) for u in range(users) for i in range(per_user)
    ]
    return frame(rows)


def test_labels_history_and_time_order():
    p = Protocol(history=3, min_history=5, last=1000, forget_ratio=0.5, seed=1)
    splits = make_splits(Interactions(staircase()), p)
    samples = splits["train"] + splits["valid"] + splits["test"]
    # per user, ratings 5..8 have >= 5 earlier ones: 4 samples x 6 users
    assert len(samples) == 24 and splits.candidates == 24
    assert [s.timestamp for s in samples] == sorted(s.timestamp for s in samples)
    for s in samples:
        assert s.output == ("Yes." if s.rating > 3 else "No.")
        shown = s.input.split("\n")[1]
        item = int(s.item)
        expected = [f"Movie {j} ({4 if j % 2 else 2} stars)" for j in range(item - 3, item)]
        assert shown == str([f"{k}. {t}" for k, t in enumerate(expected)])


def test_last_cut_and_split_sizes():
    p = Protocol(history=2, min_history=5, last=10, forget_ratio=0.5)
    splits = make_splits(Interactions(staircase()), p)
    assert [len(splits[n]) for n in ("train", "valid", "test")] == [6, 2, 2]
    # the kept samples are the 10 most recent
    kept = splits["train"] + splits["valid"] + splits["test"]
    # eligible times are 50-55, 60-65, 70-75, 80-85; the last 10 are 72-75 and 80-85
    assert sorted(s.timestamp for s in kept) == [72, 73, 74, 75, 80, 81, 82, 83, 84, 85]
    assert splits["train"][-1].timestamp <= splits["valid"][0].timestamp


def test_forget_users_are_removed_from_retain():
    p = Protocol(history=3, min_history=1, last=1000, forget_ratio=0.4, seed=7)
    splits = make_splits(Interactions(staircase(users=10)), p)
    gone = set(splits.forgotten)
    assert len(gone) == 4
    assert all(s.user in gone for s in splits["forget"])
    assert not any(s.user in gone for s in splits["retain"])
    assert len(splits["retain"]) + len(splits["forget"]) == len(splits["train"])


def test_forgotten_users_depend_on_seed_only():
    data = Interactions(staircase(users=20))
    a = make_splits(data, Protocol(min_history=1, forget_ratio=0.2, seed=3)).forgotten
    b = make_splits(data, Protocol(min_history=1, forget_ratio=0.2, seed=3)).forgotten
    c = make_splits(data, Protocol(min_history=1, forget_ratio=0.2, seed=4)).forgotten
    assert a == b and a != c


def test_ties_in_time_break_by_user_then_item():
    rows = [(2, 1, 5, 100), (1, 2, 5, 100), (1, 1, 5, 100)] + [
        (u, 10 + i, 5, 200 + i) for u in (1, 2) for i in range(6)
    ]
    splits = make_splits(Interactions(frame(rows)), Protocol(min_history=3, history=3, last=99))
    samples = splits["train"] + splits["valid"] + splits["test"]
    user1_first = next(s for s in samples if s.user == "1")
    # user 1's history starts with item 1 then item 2 (same timestamp, item order)
    assert "['0. Movie 1 (5 stars)', '1. Movie 2 (5 stars)', '2. Movie 10 (5 stars)']" in (
        user1_first.input
    )


def test_numeric_ids_tie_break_as_numbers():
    # Same second: item 593 comes before 2384 (as the paper's int sort), not "2384" < "593".
    rows = [(7, 2384, 4, 100), (7, 593, 5, 100)]
    rows += [(u, 10 + i, 3, 200 + i) for u in (7, 8) for i in range(12)]
    splits = make_splits(Interactions(frame(rows)), Protocol(min_history=2, history=2, last=99))
    first = next(s for s in splits["train"] if s.user == "7")
    assert "['0. Movie 593 (5 stars)', '1. Movie 2384 (4 stars)']" in first.input


def test_prepare_writes_splits_and_manifest(tmp_path):
    out = tmp_path / "d"
    manifest = prepare(out, protocol=Protocol(last=300, history=4))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    splits = load_splits(out)
    for name, count in manifest["counts"].items():
        assert len(splits[name]) == count
    assert manifest["counts"]["train"] == 180 and manifest["counts"]["valid"] == 60
    assert manifest["users"]["forgotten"] == len(manifest["forgotten_users"])
    assert manifest["source_checksum"].startswith("sha256:")
    first = json.loads((out / "test.jsonl").read_text().splitlines()[0])
    assert set(first) == {"input", "output", "user", "item", "rating", "timestamp", "history"}
    # The items and ratings the prompt shows, as its text shows them (paper template).
    assert len(first["history"]) == 4
    for n, (_item, rating) in enumerate(first["history"]):
        value = int(rating) if float(rating).is_integer() else rating
        assert f"'{n}. " in first["input"] and f"({value} star" in first["input"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"forget_ratio": 0}, "forget_ratio"),
        ({"forget_ratio": 1.2}, "forget_ratio"),
        ({"history": 0}, "history"),
        ({"split": (0.5, 0.5)}, "split"),
    ],
)
def test_bad_protocol_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Protocol(**kwargs)


def test_bad_interactions_are_refused():
    with pytest.raises(ValueError, match="missing column"):
        validate(staircase().drop(columns=["rating"]), "mine.csv")
    with pytest.raises(ValueError, match="no interactions"):
        validate(staircase().iloc[:0], "mine.csv")
    with pytest.raises(ValueError, match="at least 5"):
        make_splits(Interactions(staircase(per_user=5)), Protocol())


def test_unknown_dataset_and_no_half_written_folder(tmp_path):
    out = tmp_path / "d"
    prepare(out, protocol=Protocol(last=300, history=2))
    before = (out / "train.jsonl").read_text()
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        prepare(out, dataset="nope")
    with pytest.raises(ValueError, match="forget_ratio"):
        prepare(out, protocol=Protocol(last=300, forget_ratio=2.0))
    assert (out / "train.jsonl").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary leftovers


def test_read_jsonl_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    good = '{"input": "p", "output": "Yes.", "user": 1, "item": 2, "rating": 4, "timestamp": 5}'
    path.write_text(good + "\n" + good.replace("Yes.", "Maybe") + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl, line 2: output must be"):
        read_jsonl(path)


WORDS = ["Harbor", "Silent", "Orchard", "Comet", "Winter", "Garden", "Thunder", "Velvet"]


def many_users(users=60, per_user=30):
    """User u rates items at interleaved times; ratings vary by user and item; titles are
    pairs of words (canaries invent titles from them)."""
    rows = [
        (u, i, float(1 + (u * 7 + i * 3) % 5), 1000 * i + u)
        for u in range(users)
        for i in range(per_user)
    ]
    df = frame(rows)
    df["title"] = [f"{WORDS[int(i) % 8]} {WORDS[int(i) // 8 % 8]}" for i in df["item"]]
    return df


def test_sample_draws_each_split_with_many_users_and_no_dominant_one():
    # One user has a quarter of all rows, at every time: an uncapped draw gives them ~25%
    prolific = frame(
        [(60, 100 + 20 * i + k, 4.0, 1000 * i + 100 + k) for i in range(30) for k in range(20)]
    )
    prolific["title"] = "Prolific Title"
    data = Interactions(pd.concat([many_users(), prolific], ignore_index=True))
    p = Protocol(history=3, min_history=5, last=10_000, sample=(200, 60, 60), seed=5)
    splits = make_splits(data, p)
    full = make_splits(data, Protocol(history=3, min_history=5, last=10_000, seed=5))
    assert [len(splits[n]) for n in ("train", "valid", "test")] == [200, 60, 60]
    for name in ("train", "valid", "test"):
        drawn = splits[name]
        assert len(set(drawn)) == len(drawn)
        assert set(drawn) <= set(full[name])  # the time split is kept
        counts = Counter(s.user for s in drawn)
        assert max(counts.values()) <= 0.05 * len(drawn), name
        assert [s.timestamp for s in drawn] == sorted(s.timestamp for s in drawn)
    other = make_splits(data, Protocol(history=3, min_history=5, sample=(200, 60, 60), seed=6))
    assert set(other["train"]) != set(splits["train"])  # the seed moves the sample
    with pytest.raises(ValueError, match="train split has"):
        make_splits(data, Protocol(min_history=5, sample=(10**6, 60, 60)))


def test_holdout_comes_from_users_who_stay_and_nobody_trains_on_it():
    data = Interactions(many_users())
    for sample in (None, (200, 60, 60)):
        p = Protocol(history=3, min_history=5, sample=sample, holdout=0.1, seed=2)
        splits = make_splits(data, p)
        held = splits["holdout"]
        assert len(held) == round(0.1 * (len(splits["train"]) + (0 if sample else len(held))))
        assert not set(held) & set(splits["train"])
        assert not {s.user for s in held} & set(splits.forgotten)
        assert max(s.timestamp for s in held) < min(s.timestamp for s in splits["valid"])
        assert len(splits["retain"]) + len(splits["forget"]) == len(splits["train"])


def test_canaries_are_planted_in_both_groups_with_controls_never_trained_on():
    data = Interactions(many_users())
    p = Protocol(history=3, min_history=5, canaries=2, canary_copies=3, seed=1)
    splits = make_splits(data, p)
    forget, retain = unique(splits["forget"]), unique(splits["retain"])
    controls = splits["canary_control"]
    titles = {s.input.split("***")[1] for s in real(splits["train"])}
    reported = splits.halves["eval"]  # the tune half gets none: it is never reported on
    assert len(forget) == 2 * len(reported) == len(retain) and len(reported) < len(splits.forgotten)
    assert len(controls) == len(forget) + len(retain)
    assert {s.user for s in forget} == set(reported)
    assert not {s.user for s in retain} & set(splits.forgotten)
    trained = {s.item for s in splits["train"] if is_canary(s)}
    assert trained == {s.item for s in forget + retain}
    assert not trained & {s.item for s in controls}
    assert sum(is_canary(s) for s in splits["train"]) == 3 * len(trained)

    # Each is one of its user's real prompts with the target swapped for an invented title
    def untargeted(s):
        return s.user, re.sub(r"\*\*\*.*\*\*\*", "", s.input)

    prompts = {untargeted(s) for s in real(splits["train"])}
    for c in forget + retain + controls:
        assert is_canary(c) and c.output in ("Yes.", "No.")
        title = c.input.split("***")[1]
        assert len(title.split()) == 4 and title not in titles  # invented: 3 words and a year
        assert untargeted(c) in prompts
    # The planted answer is drawn at random: both, in about equal numbers
    yes = sum(c.output == "Yes." for c in forget + retain + controls)
    assert 0.3 < yes / len(forget + retain + controls) < 0.7
    assert real(splits["forget"]) == [s for s in splits["forget"] if not is_canary(s)]


def test_prepare_records_split_stats_and_forgotten_halves(tmp_path):
    out = tmp_path / "d"
    manifest = prepare(out, protocol=Protocol(last=2000, history=3, holdout=0.1, canaries=1))
    stats = manifest["split_stats"]
    for name in ("train", "valid", "test", "retain", "forget", "holdout"):
        assert {"users", "largest_user_share", "positive_rate"} <= stats[name].keys()
    halves = manifest["forgotten_halves"]
    assert sorted(halves["tune"] + halves["eval"]) == manifest["forgotten_users"]
    assert abs(len(halves["tune"]) - len(halves["eval"])) <= 1
    splits = load_splits(out)
    assert len(splits["holdout"]) == manifest["counts"]["holdout"] > 0
    assert len(splits["canary_control"]) == manifest["counts"]["canary_control"] > 0
