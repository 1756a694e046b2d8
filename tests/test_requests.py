"""Deletion requests: which samples a request removes, refusals, and the `forget` command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from e2urec.cli import main
from e2urec.data.deletion import (
    DeletionRequest,
    parse_users,
    read_interactions,
    sample_key,
    select,
    split_users,
)
from e2urec.data.prompt import build_prompt
from e2urec.data.sample import NO, YES, Sample
from e2urec.methods.base import Method

FAST_E2UREC = ["epochs=1", "aug_epochs=1", "lora_rank=2", "lora_alpha=4", "batch_size=16"]


def user_log(user: str, ratings: list[tuple[str, float]], history: int = 2) -> list[Sample]:
    """One sample per rating after the first, each showing up to `history` earlier ratings."""
    samples = []
    for t in range(1, len(ratings)):
        title, rating = ratings[t]
        prompt = build_prompt(ratings[max(0, t - history) : t], title)
        item = title.split()[0].lower()
        samples.append(Sample(prompt, YES if rating > 3 else NO, user, item, rating, t))
    return samples


@pytest.fixture
def train() -> list[Sample]:
    a = user_log("a", [("Alien (1979)", 5), ("Brazil (1985)", 2), ("Cars (2006)", 4), ("Dune (1984)", 3), ("Easy A (2010)", 5)])  # fmt: skip
    b = user_log("b", [("Brazil (1985)", 4), ("Cars (2006)", 1), ("Dune (1984)", 5)])
    return a + b


def test_user_request_takes_every_train_sample_of_those_users(train):
    chosen = select(train, DeletionRequest(users=("b",)))
    assert {s.user for s in chosen.forget} == {"b"}
    assert {s.user for s in chosen.retain} == {"a"}
    assert len(chosen.forget) == sum(s.user == "b" for s in train) == chosen.targets
    assert chosen.history == 0 and chosen.users == ["b"]


def test_interaction_request_takes_the_sample_and_prompts_that_show_its_rating(train):
    # a's "Brazil" rating (2 stars) is the target of one sample and in the history of the next
    # two (history of 2); b's own Brazil rating (4 stars) must stay.
    chosen = select(train, DeletionRequest(interactions=(("a", "brazil"),)))
    assert [(s.user, s.item) for s in chosen.forget] == [("a", "brazil"), ("a", "cars"), ("a", "dune")]  # fmt: skip
    assert chosen.targets == 1 and chosen.history == 2
    assert {sample_key(s) for s in chosen.forget}.isdisjoint(map(sample_key, chosen.retain))
    assert len(chosen.forget) + len(chosen.retain) == len(train)
    only = select(train, DeletionRequest(interactions=(("a", "brazil"),)), history=False)
    assert [(s.user, s.item) for s in only.forget] == [("a", "brazil")]


def test_history_detection_on_prepared_prompts(splits):
    counts = Counter(s.user for s in splits["train"])
    user = next(u for u, n in counts.items() if n >= 3)
    first, *later = [s for s in splits["train"] if s.user == user]
    chosen = select(splits["train"], DeletionRequest(interactions=((user, first.item),)))
    assert chosen.targets >= 1 and chosen.history >= 1
    assert later[0] in chosen.forget  # the next prompt shows the deleted rating


def test_unknown_ids_are_refused_and_listed(train):
    request = DeletionRequest(users=("a", "zz", "yy"), interactions=(("b", "alien"),))
    with pytest.raises(ValueError) as err:
        select(train, request)
    message = str(err.value)
    assert "zz, yy" in message and "b/alien" in message and "Nothing was changed" in message
    assert "a," not in message


def test_already_forgotten_users_are_refused(train):
    first = select(train, DeletionRequest(users=("b",)))
    removed = {sample_key(s) for s in first.forget}
    with pytest.raises(ValueError, match="already forgotten.*b"):
        select(train, DeletionRequest(users=("b",)), removed)
    second = select(train, DeletionRequest(users=("a",)), removed)
    assert second.retain == [] and len(second.forget) == sum(s.user == "a" for s in train)


def test_parsing_users_and_interaction_files(tmp_path):
    assert parse_users(" 12, 45,12 ,") == ("12", "45")
    with pytest.raises(ValueError):
        parse_users(" , ")
    good = tmp_path / "pairs.csv"
    good.write_text("user,item,note\n1,10,x\n1,10,y\n2,20,z\n")
    assert read_interactions(good) == (("1", "10"), ("2", "20"))
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,item\n1,10\n")
    with pytest.raises(ValueError, match="missing column.*user"):
        read_interactions(bad)
    with pytest.raises(ValueError, match="needs users"):
        DeletionRequest()


def test_split_users_into_successive_requests():
    users = [str(i) for i in range(7)]
    parts = split_users(users, 3)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert sum(parts, []) == users
    with pytest.raises(ValueError, match="cannot split"):
        split_users(users, 8)


def _forget(data_dir, model, out, *request) -> int:
    args = ["forget", "--data", str(data_dir), "--model", str(model), "--out", str(out)]
    return main([*args, "--method", "e2urec", *request, "--set", *FAST_E2UREC])


def test_forget_command_applies_a_request_and_chains(
    data_dir, splits, trained, tmp_path, capsys, monkeypatch
):
    tasks, real = [], Method.unlearn  # what the model was asked to unlearn
    monkeypatch.setattr(
        Method, "unlearn", lambda self, task: tasks.append(task) or real(self, task)
    )
    counts = Counter(s.user for s in splits["train"])
    first, second = [u for u, _ in counts.most_common()][-2:]
    assert _forget(data_dir, trained["original"], tmp_path / "one", "--users", first) == 0
    mine = [s for s in splits["train"] if s.user == first]
    assert tasks[0].forget == mine and tasks[0].original == trained["original"]
    assert sorted(map(sample_key, tasks[0].retain + mine)) == sorted(
        map(sample_key, splits["train"])
    )
    report = json.loads((tmp_path / "one" / "forget_report.json").read_text())
    assert report["request"] == {"users": [first], "interactions": []}
    assert report["removed"]["samples"] == counts[first] == report["removed"]["targets"]
    assert report["counts"]["retain"] == len(splits["train"]) - counts[first]
    for when in (report, report["before"]):
        assert set(when["forget"]) == set(when["test"]) == {"auc", "acc", "logloss"}
        assert 0 <= when["mia_auc"] <= 1
    assert report["seconds"] > 0 and Path(report["model"]).is_dir()

    # A second request on the new model remembers what the first removed.
    pairs = tmp_path / "pairs.csv"
    item = next(s.item for s in splits["train"] if s.user == second)
    pairs.write_text(f"user,item\n{second},{item}\n")
    out2 = tmp_path / "two"
    assert _forget(data_dir, tmp_path / "one", out2, "--interactions", str(pairs)) == 0
    assert (second, item) in {(s.user, s.item) for s in tasks[1].forget}
    assert {s.user for s in tasks[1].forget} == {second} and tasks[1].original == str(
        tmp_path / "one"
    )
    # the first request's samples stay out of the second one's retain set
    assert not {sample_key(s) for s in tasks[1].retain} & {
        sample_key(s) for s in mine + tasks[1].forget
    }
    report2 = json.loads((out2 / "forget_report.json").read_text())
    assert report2["counts"]["removed_before"] == counts[first]
    assert report2["counts"]["retain"] == len(splits["train"]) - len(report2["removed_keys"])
    assert len(report2["requests"]) == 2


def test_forget_command_refuses_unknown_ids_and_writes_nothing(data_dir, trained, tmp_path, capsys):
    out = tmp_path / "refused"
    code = _forget(data_dir, trained["original"], out, "--users", "no-such-user,nobody")
    assert code == 2
    assert "no-such-user, nobody" in capsys.readouterr().err
    assert not out.exists()
