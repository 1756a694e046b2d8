"""Prompt templates: paper, compact and a user's Jinja2 file, one builder for every prompt."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pandas as pd
import pytest

from e2urec.data import Protocol, load_splits, prepare, template_texts
from e2urec.data.canaries import is_canary
from e2urec.data.deletion import DeletionRequest, select
from e2urec.data.protocol import make_splits
from e2urec.data.sample import Sample
from e2urec.data.sources import Interactions
from e2urec.deploy.integrity import digest
from e2urec.evals.evaluation import shown_mean
from e2urec.service.live import read_catalogue
from e2urec.service.schemas import ScoreRequest
from e2urec.service.scorer import build_samples

NAMES = [
    "Alpha",
    "Bravo",
    "Charlie",
    "Delta",
    "Echo",
    "Foxtrot",
    "Golf",
    "Hotel",
    "India",
    "Juliet",
]
RATINGS = {5.0: "loved it", 4.0: "liked it", 3.0: "found it okay", 2.0: "disliked it"}


def log(users=8, per_user=10):
    """User u rates items 0..per_user-1 in time order, ratings cycling 2, 3, 4, 5."""
    rows = [(u, i, 2.0 + (i + u) % 4, 10 * i + u) for u in range(users) for i in range(per_user)]
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])
    df["user"], df["item"] = df["user"].astype(str), df["item"].astype(str)
    df["title"] = [f"{NAMES[int(i)]} Story (19{50 + int(i)})" for i in df["item"]]
    df["gender"], df["age"], df["job"] = "female", "25", "writer"
    return df


def splits_with(template: str, **options):
    p = Protocol(history=3, min_history=3, last=1000, forget_ratio=0.25, template=template)
    for key, value in options.items():
        setattr(p, key, value)
    return make_splits(Interactions(log()), p)


def test_compact_prompts_show_the_profile_and_each_rating_in_words():
    splits = splits_with("compact")
    for s in splits["train"] + splits["test"]:
        lines = s.input.splitlines()
        assert lines[0] == "User: female, age 25, writer."
        assert len(s.history) == 3
        item = int(s.item)
        for line, (shown, rating) in zip(lines[2:5], s.history):
            assert int(shown) < item and line.endswith(f": {RATINGS[rating]}")
        assert lines[-1] == f"Will they like {NAMES[item]} Story (19{50 + item})? Answer yes or no."


def test_the_rule_with_no_training_reads_the_same_ratings_whatever_the_template():
    paper, compact = splits_with("paper"), splits_with("compact")
    assert [shown_mean(s) for s in paper["test"]] == [shown_mean(s) for s in compact["test"]]
    assert {shown_mean(s) for s in compact["test"]} != {2.75}  # ratings found, not mid-scale


def test_an_interaction_request_finds_the_compact_prompts_that_show_the_rating():
    train = splits_with("compact")["train"]
    first = train[0]
    later = [s for s in train if s.user == first.user and s.timestamp > first.timestamp]
    showing = [s for s in later if first.item in dict(s.history)]
    assert showing  # history 3: the next prompts of the user show it
    chosen = select(train, DeletionRequest(interactions=((first.user, first.item),)))
    assert {s.item for s in chosen.forget} == {first.item} | {s.item for s in showing}
    assert chosen.history == len(showing)


def test_canaries_ask_about_an_invented_title_in_the_template_of_their_prompt():
    splits = splits_with("compact", canaries=1, holdout=0.1)
    canaries = [s for s in splits["train"] if is_canary(s)]
    assert canaries
    originals = {(s.user, s.history): s for s in splits["train"] if not is_canary(s)}
    for c in canaries:
        source = originals[(c.user, c.history)]
        assert c.input.splitlines()[:-1] == source.input.splitlines()[:-1]
        asked = c.input.splitlines()[-1]
        assert asked.startswith("Will they like ") and asked != source.input.splitlines()[-1]
        title = asked.removeprefix("Will they like ").removesuffix("? Answer yes or no.")
        assert title not in set(log()["title"])  # an invented title


def user_template(tmp_path, text: str):
    path = tmp_path / "mine.j2"
    path.write_text(text)
    return str(path)


def test_a_user_template_renders_and_its_text_is_recorded(tmp_path):
    text = "{{ profile.job }} saw {% for h in history %}{{ h.title }}={{ h.rating }};{% endfor %} {{ kind.noun }}: {{ target }}?"  # fmt: skip
    path = user_template(tmp_path, text)
    manifest = prepare(tmp_path / "d", protocol=Protocol(last=300, history=2, template=path))
    first = load_splits(tmp_path / "d")["train"][0]
    # No profile in this data set: an empty job, and the prompt stripped.
    pairs = [p.split("=") for p in first.input.removeprefix("saw ").split(";")[:-1]]
    assert [float(r) for _, r in pairs] == [r for _, r in first.history]
    assert first.input.startswith("saw ") and " movie: " in first.input
    assert manifest["template"]["name"] == path and manifest["template"]["source"] == text
    assert all(t.endswith("?") and " movie: " in t for t in template_texts(tmp_path / "d"))
    (tmp_path / "mine.j2").write_text(text + " ")  # another text: another digest
    again = prepare(tmp_path / "e", protocol=Protocol(last=300, history=2, template=path))
    assert again["template"]["digest"] != manifest["template"]["digest"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("{{ user }} likes {{ target }}", "unknown variable.*user"),
        ("{{ profile.zip }} {{ target }}", "zip"),
        ("{% if false %}{{ target }}{% endif %}", "empty prompt"),
        ("{{ target ", "line 1"),
        # A sandbox with only the documented fields: no way to Python objects or methods.
        ("{{ kind.__class__.__init__.__globals__ }}{{ target }}", "no attribute"),
        ("{{ profile.items }} {{ target }}", "no attribute 'items'"),
        ("{{ 1 / (history | length) }} {{ target }}", "ZeroDivisionError"),
    ],
)
def test_a_broken_user_template_is_refused_naming_the_file(tmp_path, text, message):
    path = user_template(tmp_path, text)
    with pytest.raises(ValueError, match=message) as err:
        Protocol(template=path)
    assert path in str(err.value)


def test_an_unknown_template_name_is_refused():
    with pytest.raises(ValueError, match="paper.*compact"):
        Protocol(template="fancy")


def test_the_service_builds_prompts_with_the_data_folder_template(tmp_path):
    data = tmp_path / "deploy" / "data"
    prepare(data, protocol=Protocol(last=300, history=3, template="compact"))
    items = json.loads((data / "titles.json").read_text())["items"]
    (tmp_path / "deploy" / "catalogue.json").write_text(
        json.dumps({"kind": "movie", "items": items})
    )
    catalogue = read_catalogue(tmp_path / "deploy")
    ids = list(items)[:4]
    req = ScoreRequest.model_validate(
        {"history": [{"item": i, "rating": 5} for i in ids[:3]], "candidates": [ids[3]]}
    )
    [sample] = build_samples(catalogue, req)
    lines = sample.input.splitlines()
    assert lines[0] == "Movies they rated, oldest first:"
    assert lines[1] == f"- {items[ids[0]]}: loved it"
    assert lines[-1] == f"Will they like {items[ids[3]]}? Answer yes or no."


def test_a_rating_only_shown_in_histories_can_be_deleted():
    """A user's first ratings are never a target, only shown: known all the same, and the
    prompts that show one are what its deletion removes."""
    train = splits_with("compact")["train"]
    targets = {(s.user, s.item) for s in train}
    user, item = next(
        (s.user, i) for s in train for i, _ in s.history if (s.user, i) not in targets
    )
    chosen = select(train, DeletionRequest(interactions=((user, item),)))
    showing = {s.item for s in train if s.user == user and item in dict(s.history)}
    assert chosen.targets == 0 and {s.item for s in chosen.forget} == showing
    assert chosen.history == len(showing)


def test_rows_without_history_hash_as_before_it_was_recorded():
    """Deployments made before samples recorded their history keep their ledgers' digests."""
    sample = Sample("p", "Yes.", "u", "i", 4.0, 7)
    old = {"input": "p", "output": "Yes.", "user": "u", "item": "i", "rating": 4.0, "timestamp": 7}
    line = json.dumps(old, sort_keys=True, ensure_ascii=False) + "\n"
    assert digest([sample]) == hashlib.sha256(line.encode()).hexdigest()
    assert digest([replace(sample, history=(("j", 3.0),))]) != digest([sample])
