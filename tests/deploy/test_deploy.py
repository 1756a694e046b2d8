"""The deployment folder: requests end to end, refusals, a tamper-evident ledger, crashes, locks."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

import e2urec
from e2urec.cli import main
from e2urec.data.deletion import shown_as, shown_ratings, target_title
from e2urec.data.sample import read_jsonl, write_jsonl
from e2urec.deploy import Busy, apply, init, intake, live_model, request, status
from e2urec.deploy import apply_loop as rollout
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Layout, tree_hash
from e2urec.deploy.integrity import verify
from e2urec.deploy.ledger import GENESIS, Ledger, row_hash
from e2urec.methods.base import Method
from e2urec.model import backbone, loader
from e2urec.model.ensemble import save_ensemble

FAST = {"epochs": 1, "aug_epochs": 1, "lora_rank": 2, "lora_alpha": 4, "batch_size": 16}
OPTIONS = {**FAST, "verify": {"samples": 20}}
HIDDEN = "zz-forget-me"  # a user id no other byte in the deployment can match by chance


@pytest.fixture(scope="module")
def source(tmp_path_factory, data_dir, splits):
    """The prepared data with a user who is in train and a later split renamed to HIDDEN."""
    later = {s.user for s in splits["test"] + splits["valid"]}
    counts = Counter(s.user for s in splits["train"] if s.user in later)
    user = min(counts, key=counts.get)  # the fewest samples: the quickest unlearning
    out = tmp_path_factory.mktemp("source") / "data"
    shutil.copytree(data_dir, out)
    for path in out.glob("*.jsonl"):
        samples = [replace(s, user=HIDDEN) if s.user == user else s for s in read_jsonl(path)]
        write_jsonl(samples, path)
    manifest = json.loads((out / "manifest.json").read_text())
    # The manifest names the benchmark's forgotten users: make sure the purge must edit it.
    manifest["forgotten_users"] = [u for u in manifest["forgotten_users"] if u != user] + [HIDDEN]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory, trained):
    """The trained recommender, its report naming the backbone (for the Retrain reference)."""
    out = tmp_path_factory.mktemp("model") / "original"
    shutil.copytree(trained["original"], out)
    report = json.loads((out / "train_report.json").read_text())
    (out / "train_report.json").write_text(json.dumps({**report, "base": trained["base"]}))
    return out


def _pair_with_history(train):
    """A (user, item) rating of a user other than HIDDEN that later prompts show."""
    for s in train:
        later = [t for t in train if t.user == s.user and shown_as(s) in shown_ratings(t)]
        if s.user != HIDDEN and later:
            return s
    raise AssertionError("no rating shown in a later prompt")


@pytest.fixture(scope="module")
def applied(tmp_path_factory, source, model):
    """A deployment after one `apply` of two requests: a user's, and one rating of another."""
    data = tmp_path_factory.mktemp("deploy") / "data"
    shutil.copytree(source, data)
    shutil.copy(data / "test.jsonl", data / "holdout.jsonl")  # as `prepare` may write one
    # The bench's stage marker: its result is the manifest, forgotten users named in clear.
    marker = {"digest": "0" * 64, "result": {"forgotten_users": [HIDDEN]}}
    (data / ".stage.json").write_text(json.dumps(marker))
    root = data.parent / "d"
    init(data, model, root, options=OPTIONS)
    rated = _pair_with_history(read_jsonl(root / "data" / "train.jsonl"))
    first = request(root, users=[HIDDEN])
    second = request(root, interactions=[(rated.user, rated.item)])
    tasks, real = [], Method.unlearn
    with pytest.MonkeyPatch.context() as patch:  # what the model was asked to unlearn
        patch.setattr(Method, "unlearn", lambda self, task: tasks.append(task) or real(self, task))
        outcomes = apply(root)
    return {
        "root": root,
        "ids": (first, second),
        "rated": rated,
        "outcomes": outcomes,
        "tasks": tasks,
    }


def _copy(applied, tmp_path) -> Path:
    shutil.copytree(applied["root"], tmp_path / "d")
    return tmp_path / "d"


def _files_with(root: Path, text: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _samples(root: Path) -> dict:
    return {p.name: read_jsonl(p) for p in (root / "data").glob("*.jsonl") if p.stat().st_size}


def test_a_request_end_to_end(applied, source):
    root, rated = applied["root"], applied["rated"]
    assert _files_with(source, HIDDEN)  # the user was there
    # The model unlearned exactly what was asked: HIDDEN's samples, the rating and its echoes
    [task] = applied["tasks"]
    asked = [s for s in read_jsonl(source / "train.jsonl") if s.user == HIDDEN]
    assert asked and all(s in task.forget for s in asked)
    assert (rated.user, rated.item) in {(s.user, s.item) for s in task.forget}
    assert {s.user for s in task.forget} == {HIDDEN, rated.user}
    assert all(
        s.user == HIDDEN or shown_as(rated) in shown_ratings(s) or s.item == rated.item
        for s in task.forget
    )
    echoes = [
        s for s in task.retain if s.user == rated.user and shown_as(rated) in shown_ratings(s)
    ]
    assert not echoes and not any(s.user == HIDDEN or s in task.forget for s in task.retain)
    assert len(task.retain) + len(task.forget) == len(read_jsonl(source / "train.jsonl"))
    assert {o["id"] for o in applied["outcomes"]} == set(applied["ids"])
    for outcome in applied["outcomes"]:
        assert outcome["state"] == "purged" and outcome["version"] == "v1"
        assert outcome["verification"]["passed"]
        assert outcome["verification"]["holdout"] == "holdout.jsonl"
    # Every file: no HIDDEN in clear (split files, manifest, ledger, model folders).
    assert _files_with(root, HIDDEN) == []
    shown = shown_as(rated)
    for name, samples in _samples(root).items():
        assert (rated.user, rated.item) not in {(s.user, s.item) for s in samples}, name
        assert not any(s.user == rated.user and shown in shown_ratings(s) for s in samples), name
    train = read_jsonl(root / "data" / "train.jsonl")
    assert any(s.user == rated.user for s in train)  # only the rating and its echoes went
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert manifest["counts"]["train"] == len(train)
    # The ledger vouches for the live model, and the live model is the one it names.
    assert verify(root) == {"ok": True, "rows": 9, "problems": []}
    state = status(root)
    assert state["live"] == "v1" and live_model(root) == root / "models" / "v1"
    [live] = [m for m in state["models"] if m["live"]]
    assert live["id"] == "v1" and live["hash"] == tree_hash(live_model(root))
    assert loader.load(live_model(root)).yes_id is not None
    with Ledger(root / "ledger.sqlite") as ledger:
        events = [r.event for r in ledger.records() if r.request == applied["ids"][0]]
        assert events == ["received", "verified", "applied", "purged"]
        purged = next(r for r in ledger.records() if r.event == Event.PURGED)
        assert set(purged.details["removed"]) == {p.name for p in root.glob("data/*.jsonl")}
        assert "holdout.jsonl" in purged.details["removed"]
        assert ledger.pending() == {}
    catalogue = json.loads((root / "catalogue.json").read_text())
    assert catalogue["kind"] == "movie" and catalogue["items"][rated.item] == target_title(rated)


def test_refusals_leave_one_refused_row_and_change_nothing(applied, source, tmp_path):
    root, rated = _copy(applied, tmp_path), applied["rated"]
    other = next(s.user for s in read_jsonl(root / "data" / "train.jsonl"))
    pending = request(root, users=[other])
    cases = [
        ({}, "needs users"),
        ({"users": ["nobody", "ghost"]}, "not in the live data: nobody, ghost"),
        ({"users": [HIDDEN]}, f"already forgotten by an earlier request: {HIDDEN}"),
        ({"interactions": [(rated.user, rated.item)]}, "already forgotten"),
        ({"users": [other]}, f"already in a request waiting for `apply`: {other}"),
    ]
    for kwargs, message in cases:
        data = {p.name: p.read_bytes() for p in (root / "data").iterdir()}
        rows = Ledger(root / "ledger.sqlite").records()
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            request(root, **kwargs)
        after = Ledger(root / "ledger.sqlite").records()
        assert len(after) == len(rows) + 1 and after[-1].event == Event.REFUSED
        assert data == {p.name: p.read_bytes() for p in (root / "data").iterdir()}
    assert _files_with(root, HIDDEN) == [] and _files_with(root, "ghost") == []
    assert list(Ledger(root / "ledger.sqlite").pending()) == [pending]
    assert verify(root)["ok"]


def _edit(db: Path, sql: str) -> None:
    """Run `sql` on the ledger as someone who drops its append-only triggers first."""
    with sqlite3.connect(db) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
        conn.execute("DROP TRIGGER ledger_no_update")
        conn.execute("DROP TRIGGER ledger_no_delete")
        conn.execute(sql)


@pytest.mark.parametrize(
    "tamper, problem",
    [
        ("UPDATE ledger SET samples = samples + 1 WHERE seq = 2", "row 2: its content"),
        ("DELETE FROM ledger WHERE seq = 3", "row 3: missing"),
        ("DELETE FROM ledger WHERE seq = (SELECT MAX(seq) FROM ledger)", "rows were removed"),
        ("swap", "models/v1: its files do not match"),
        # A rewritten chain still has to tell a consistent story.
        ("rechain", "events out of order: received, verified, purged"),
        # Rows that each still match their own hash: only the links and the head tell
        ("reorder", "row 2: does not follow the row before it"),
        ("forge last", "rows were removed or added"),
    ],
)
def test_ledger_verify_detects_tampering(applied, tmp_path, tamper, problem):
    root = _copy(applied, tmp_path)
    db = root / "ledger.sqlite"
    if tamper == "swap":
        weights = root / "models" / "v1" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[::-1])
    elif tamper == "rechain":
        _rechain_without(db, "applied")
    elif tamper == "reorder":  # rows 2 and 3 change places
        _edit(db, "UPDATE ledger SET seq = -seq WHERE seq IN (2, 3)")
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE ledger SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END WHERE seq < 0")
    elif tamper == "forge last":  # new content, and a hash that matches it
        with Ledger(db) as book:
            last = book.rows()[-1]
        last["samples"] = (last["samples"] or 0) + 1
        _edit(db, f"UPDATE ledger SET samples = {last['samples']} WHERE seq = {last['seq']}")
        with sqlite3.connect(db) as conn:
            forged = row_hash(last["prev_hash"], last)
            conn.execute("UPDATE ledger SET hash = ? WHERE seq = ?", (forged, last["seq"]))
    else:
        _edit(db, tamper)
    result = verify(root)
    assert not result["ok"]
    assert any(problem in p for p in result["problems"]), result["problems"]
    assert main(["ledger", "verify", "--deploy", str(root)]) == 2


def _rechain_without(db: Path, event: str) -> None:
    """Delete the first `event` row and rewrite every hash after it, as a forger would."""
    with Ledger(db) as book:
        rows = book.rows()
    victim = next(r for r in rows if r["event"] == event)
    rows = [r for r in rows if r is not victim]
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER ledger_no_delete")
        conn.execute("DELETE FROM ledger")
        prev = GENESIS
        for seq, row in enumerate(rows, 1):
            row.update(seq=seq, prev_hash=prev)
            row["hash"] = prev = row_hash(prev, row)
            marks = ", ".join("?" * len(row))
            conn.execute(f"INSERT INTO ledger VALUES ({marks})", list(row.values()))
        conn.execute("UPDATE head SET rows = ?, hash = ?", (len(rows), prev))


class Crash(BaseException):
    pass


def _crash_at(step):
    def checkpoint(name):
        assert name in rollout.STEPS
        if name == step:
            raise Crash(step)

    return checkpoint


def test_a_crash_after_any_step_leaves_a_state_the_next_apply_completes(
    tmp_path, source, model, monkeypatch
):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    rid = request(root, users=[HIDDEN])
    # Each run dies one step later than the one before, so each run starts from the state the
    # previous crash left (before "recorded" it starts over, after it rolls forward).
    for step in rollout.STEPS:
        monkeypatch.setattr(rollout, "_checkpoint", _crash_at(step))
        with pytest.raises(Crash):
            apply(root)
        assert verify(root)["ok"], (step, verify(root))
        assert status(root, rid)["requests"][0]["state"] != "purged"
        assert rid in Ledger(root / "ledger.sqlite").pending()
        if rollout.STEPS.index(step) < rollout.STEPS.index("switched"):
            assert status(root)["live"] == "v0", step
    monkeypatch.setattr(rollout, "_checkpoint", lambda name: None)
    [outcome] = apply(root)
    assert outcome["state"] == "purged" and outcome["version"] == "v1"
    assert outcome["verification"]["holdout"] == "test.jsonl"  # the data has no holdout split
    assert sorted(p.name for p in (root / "models").iterdir()) == ["v0", "v1"]
    assert _files_with(root, HIDDEN) == [] and verify(root)["ok"]


def test_kill_9_in_the_middle_of_the_purge(tmp_path, source, model, monkeypatch):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    rid = request(root, users=[HIDDEN])
    # The unlearning in this process (quicker); the process killed in the purge resumes it.
    monkeypatch.setattr(rollout, "_checkpoint", _crash_at("recorded"))
    with pytest.raises(Crash):
        apply(root)
    monkeypatch.undo()
    code = f"from e2urec.deploy import apply; apply({str(root)!r})"
    src = str(Path(e2urec.__file__).parents[1])
    env = {**os.environ, rollout.CRASH_ENV: "purging", "PYTHONPATH": src}
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert killed.returncode == 137, killed.stderr.decode()[-2000:]
    assert _files_with(root / "data", HIDDEN)  # it died with the purge half done
    assert verify(root)["ok"] and rid in Ledger(root / "ledger.sqlite").pending()
    # A write the kill cut short leaves its temporary file, by the name recorded before it.
    Layout(root).temporary(root / "data" / "train.jsonl").write_text(f'{{"user": "{HIDDEN}"')
    [outcome] = apply(root)
    assert outcome["id"] == rid and outcome["state"] == "purged"
    assert _files_with(root, HIDDEN) == [] and verify(root)["ok"]


def test_a_second_apply_refuses_and_loses_nothing(applied, tmp_path):
    root = _copy(applied, tmp_path)
    other = next(s.user for s in read_jsonl(root / "data" / "train.jsonl"))
    rid = request(root, users=[other])
    rows = len(Ledger(root / "ledger.sqlite").rows())
    with open(root / "apply.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running apply holds it
        with pytest.raises(Busy, match="another `apply` is running"):
            apply(root)
    assert len(Ledger(root / "ledger.sqlite").rows()) == rows
    assert rid in Ledger(root / "ledger.sqlite").pending()


def test_failed_verification_keeps_the_previous_model(tmp_path, source, model):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    rid = request(root, users=[HIDDEN])
    train = (root / "data" / "train.jsonl").read_bytes()
    # Any two models differ, so a JSD bound of 0 to the Retrain reference always fails.
    strict = {**FAST, "verify": {"samples": 20, "retrain": True, "max_jsd": 0.0}}
    [outcome] = apply(root, options=strict)
    # The attempt failed; the request is not dropped: it waits, with the attempt recorded.
    assert outcome["state"] == "retrying" and outcome["attempts"] == 1
    assert outcome["error"] == "VerificationFailed"
    assert outcome["verification"]["jsd_retrain"] > 0
    assert any("Retrain reference" in f for f in outcome["verification"]["failures"])
    assert status(root)["live"] == "v0" and [p.name for p in (root / "models").iterdir()] == ["v0"]
    assert (root / "data" / "train.jsonl").read_bytes() == train
    assert verify(root)["ok"] and list(Ledger(root / "ledger.sqlite").pending()) == [rid]
    [outcome] = apply(root)  # the next apply tries again, and this time it passes
    assert outcome["state"] == "purged" and outcome["attempts"] == 1 and verify(root)["ok"]


def test_init_checks_its_inputs(tmp_path, source, model, applied):
    with pytest.raises(ValueError, match="not empty"):
        init(source, model, applied["root"])
    with pytest.raises(ValueError, match="verify.max_mia_auc must be in"):
        init(source, model, tmp_path / "d", options={"verify": {"max_mia_auc": 2}})
    leaky = tmp_path / "leaky"
    shutil.copytree(model, leaky)
    (leaky / "forget_report.json").write_text("{}")
    with pytest.raises(ValueError, match="made by `e2urec forget`"):
        init(source, leaky, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_the_four_commands(tmp_path, source, model, capsys):
    root = str(tmp_path / "d")
    settings = [f"{k}={v}" for k, v in FAST.items()] + ["verify.samples=20"]
    init_args = ["--data", str(source), "--model", str(model), "--out", root]
    assert main(["init", *init_args, "--set", *settings]) == 0
    capsys.readouterr()
    assert main(["request", "--deploy", root, "--users", HIDDEN]) == 0
    rid = capsys.readouterr().out.strip()
    assert main(["apply", "--deploy", root]) == 0
    applied = json.loads(capsys.readouterr().out)
    assert applied["requests"][0]["state"] == "purged"
    assert main(["status", "--deploy", root, rid]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["live"] == "v1" and shown["requests"][0]["id"] == rid
    assert applied["ledger"] == shown["ledger"]  # the head to keep elsewhere
    head = ["--expect-head", applied["ledger"]["hash"]]
    assert main(["ledger", "verify", "--deploy", root, *head]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert main(["request", "--deploy", root, "--users", HIDDEN]) == 2
    assert "already forgotten" in capsys.readouterr().err


def test_models_are_copied_with_what_they_build_on_still_found(tmp_path, source, splits, trained):
    from e2urec.model.train import TrainConfig, train

    lora = tmp_path / "runs" / "lora"
    config = TrainConfig(epochs=1, batch_size=16, lora=True, lora_rank=2, lora_alpha=4)
    train(trained["base"], splits["train"][:16], splits["valid"][:8], lora, config)
    assert backbone.read_meta(lora)["base"].startswith("..")  # relative: a copy would lose it
    root = tmp_path / "elsewhere" / "d"
    init(source, lora, root)
    assert loader.load(live_model(root)).model is not None
    assert verify(root)["ok"]
    # An ensemble (SISA, RecEraser) names its shards relatively too.
    ensemble = tmp_path / "runs" / "ensemble"
    save_ensemble(ensemble, [lora, trained["original"]])
    init(source, ensemble, tmp_path / "elsewhere" / "e")
    assert loader.load(live_model(tmp_path / "elsewhere" / "e")).model is not None


def test_two_requests_at_once_for_the_same_user_one_is_refused(applied, tmp_path, monkeypatch):
    root = _copy(applied, tmp_path)
    other = next(s.user for s in read_jsonl(root / "data" / "train.jsonl"))
    start, results, checks = threading.Barrier(2), [], intake._refuse

    def slow_checks(*args):  # widen the window between checking and recording
        checks(*args)
        time.sleep(0.5)

    monkeypatch.setattr(intake, "_refuse", slow_checks)

    def submit():
        start.wait()
        try:
            results.append(request(root, users=[other]))
        except ValueError as err:
            results.append(err)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(r).__name__ for r in results) == ["Refused", "str"]
    assert len(Ledger(root / "ledger.sqlite").pending()) == 1
