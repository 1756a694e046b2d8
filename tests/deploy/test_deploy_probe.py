"""What a second probe of a deployment found (issue 37): each test fails on the code before it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import test_deploy
from test_deploy_integrity import _refuses_and_changes_nothing

from e2urec.cli import main
from e2urec.data.sample import YES, Sample, read_jsonl, write_jsonl
from e2urec.deploy import Tampered, apply, init, pending_requests, request, status
from e2urec.deploy import apply_loop as rollout
from e2urec.deploy.folder import Layout
from e2urec.deploy.integrity import check, servable, verify
from e2urec.deploy.ledger import UNTRAINED, Ledger
from e2urec.service.worker import pending as worker_pending

HIDDEN, OPTIONS = test_deploy.HIDDEN, test_deploy.OPTIONS
source, model, applied = test_deploy.source, test_deploy.model, test_deploy.applied
LATER_ONLY = "zz-later-only"  # a user whose every row is in test


def _copy(applied, tmp_path) -> Path:
    return test_deploy._copy(applied, tmp_path)


def _train_users(root: Path) -> list[str]:
    return sorted({s.user for s in read_jsonl(root / "data" / "train.jsonl")})


def _all_rows(root: Path) -> list:
    files = (root / "data").glob("*.jsonl")
    return [s for p in files if p.stat().st_size for s in read_jsonl(p)]


def _rows(root: Path) -> int:
    with Ledger(root / "ledger.sqlite") as book:
        return len(book.rows())


# ---- 1: LIVE alone names nothing to serve --------------------------------------------------


def test_only_the_version_the_ledger_says_is_live_is_servable(applied, tmp_path):
    root = _copy(applied, tmp_path)
    assert servable(Layout(root), rehash=True) == "v1"
    for live in ("v0", "../../elsewhere", str(root / "models" / "v0")):
        (root / "LIVE").write_text(live + "\n")
        with pytest.raises(Tampered, match="will not serve"):
            servable(Layout(root))


# ---- 2: the pending table is bound to the chain ----------------------------------------------


def test_an_edited_pending_request_is_caught_and_not_applied(applied, tmp_path):
    root = _copy(applied, tmp_path)
    asked, other = _train_users(root)[:2]
    rid = request(root, users=[asked])
    with sqlite3.connect(root / "ledger.sqlite") as db:  # no trigger guards this table
        body = {"users": [other], "interactions": [], "shown": []}
        db.execute("UPDATE pending SET body = ? WHERE request = ?", (json.dumps(body), rid))
    problems = verify(root)["problems"]
    assert any(f"request {rid}: its pending ids do not match" in p for p in problems), problems
    _refuses_and_changes_nothing(root, "pending ids do not match")
    assert other in _train_users(root) and asked in _train_users(root)


def test_pending_ids_that_are_not_json_name_the_ledger(applied, tmp_path, capsys):
    root = _copy(applied, tmp_path)
    rid = request(root, users=[_train_users(root)[0]])
    with sqlite3.connect(root / "ledger.sqlite") as db:
        db.execute("UPDATE pending SET body = '{' WHERE request = ?", (rid,))
    for command in (["request", "--list"], ["apply"], ["ledger", "verify"]):
        assert main([*command, "--deploy", str(root)]) == 2
        err = capsys.readouterr().err
        assert "ledger.sqlite" in err and f"request {rid} are not JSON" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---- 3: a request is checked as an apply is ----------------------------------------------------


def test_a_request_on_a_broken_deployment_is_not_refused_but_raised(applied, tmp_path):
    root = _copy(applied, tmp_path)
    user = _train_users(root)[0]
    key_file = Path(json.loads((root / "config.json").read_text())["key_file"])
    saved, rows = key_file.read_bytes(), _rows(root)
    key_file.write_bytes(os.urandom(32))  # replaced: its HMACs would match nothing recorded
    with pytest.raises(Tampered, match="not the one the deployment was created with"):
        request(root, users=[user])
    key_file.write_bytes(saved)
    train = root / "data" / "train.jsonl"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(line for line in lines if f'"user": "{user}"' not in line))
    with pytest.raises(Tampered, match="train.jsonl: its content differs"):
        request(root, users=[user])  # a real user, whose rows were cut: not "unknown"
    assert _rows(root) == rows and Ledger(root / "ledger.sqlite").pending() == {}


# ---- 4: every split the deployment keeps ------------------------------------------------------


@pytest.fixture
def later_only(tmp_path, source):
    """The prepared data with one user whose rows are all in test, none in train."""
    data = tmp_path / "data"
    shutil.copytree(source, data)
    test = read_jsonl(data / "test.jsonl")
    user = next(s.user for s in test if s.user != HIDDEN)
    write_jsonl([replace(s, user=LATER_ONLY) if s.user == user else s for s in test], data / "test.jsonl")  # fmt: skip
    return data


def test_users_and_ratings_outside_train_are_erased_from_every_split(tmp_path, later_only, model):
    root = tmp_path / "d"
    init(later_only, model, root, options=OPTIONS)
    train, rows = read_jsonl(root / "data" / "train.jsonl"), _all_rows(root)
    trained = {(s.user, s.item) for s in train}
    held = [s for s in read_jsonl(root / "data" / "valid.jsonl") if (s.user, s.item) not in trained]

    def shown_later(s) -> bool:  # a later prompt of the user shows the rating
        return any(t.user == s.user and s.item in dict(t.history) for t in rows)

    users = {t.user for t in train} - {HIDDEN}
    rating = next(s for s in held if s.user in users and shown_later(s))
    first = request(root, users=[LATER_ONLY])
    second = request(root, interactions=[(rating.user, rating.item)])
    outcomes = {o["id"]: o for o in apply(root)}  # nothing to unlearn: no train row of either
    assert set(outcomes) == {first, second}
    for outcome in outcomes.values():
        assert outcome["state"] == "purged" and outcome["reason"] == UNTRAINED
    left = _all_rows(root)
    assert not any(s.user == LATER_ONLY for s in left)
    assert not any(s.user == rating.user and (s.item == rating.item or rating.item in dict(s.history)) for s in left)  # fmt: skip
    assert read_jsonl(root / "data" / "train.jsonl") == train and status(root)["live"] == "v0"
    assert verify(root)["ok"], verify(root)


# ---- 5: no forgotten id left in clear: the bench's marker (test_deploy's `applied`) ------------


def test_init_leaves_the_benchs_stage_markers_behind(applied):
    assert not list(applied["root"].rglob(".stage.json"))


# ---- 6: verify reads the rows a bounded number of times, and once per change ----------------


class Counted(list):
    iterations = 0

    def __iter__(self):
        Counted.iterations += 1
        return super().__iter__()


def test_ledger_verify_is_linear_in_the_ledger(applied, tmp_path, monkeypatch):
    root = _copy(applied, tmp_path)
    refused = {"event": "refused", "users": 1, "samples": 0, "details": {"reason": "unknown"}}
    with Ledger(root / "ledger.sqlite") as book:  # what a token holder adds at 40 a second
        book.append([{**refused, "request": f"r-{i:012d}"} for i in range(3000)])
    real = Ledger.rows
    monkeypatch.setattr(Ledger, "rows", lambda self: Counted(real(self)))
    assert verify(root)["ok"]
    assert Counted.iterations < 50  # a pass per check; on main, one per request (3,000)


def test_an_unchanged_ledger_is_read_once_and_an_edited_one_again(applied, tmp_path, monkeypatch):
    root = _copy(applied, tmp_path)
    reads, real = [], Ledger.rows
    monkeypatch.setattr(Ledger, "rows", lambda self: reads.append(1) or real(self))
    assert verify(root)["ok"] and verify(root)["ok"] and len(reads) == 1
    test_deploy._edit(root / "ledger.sqlite", "UPDATE ledger SET samples = samples + 1 WHERE seq = 2")  # fmt: skip
    problems = verify(root)["problems"]  # the same head: the file's change counter tells
    assert any("row 2: its content does not match" in p for p in problems) and len(reads) == 2


def test_the_ledger_is_checked_as_one_snapshot(applied, tmp_path, monkeypatch):
    """A request checks the ledger while an apply appends to it: rows and head read apart
    disagree ("rows were removed or added"), as they did for two of the soak's requests."""
    root = _copy(applied, tmp_path)
    refused = {"event": "refused", "users": 1, "samples": 0, "details": {"reason": "unknown"}}
    real, writers = Ledger.rows, []

    def append(path: Path) -> None:
        with Ledger(path) as book:
            book.append([{**refused, "request": f"r-meanwhile-{len(writers)}"}])

    def rows_then_a_write(self):
        found = real(self)
        writers.append(threading.Thread(target=append, args=(self.path,)))
        writers[-1].start()
        writers[-1].join(1.0)  # it commits at once, unless the reader's snapshot holds it off
        return found

    monkeypatch.setattr(Ledger, "rows", rows_then_a_write)
    problems, _ = check(Layout(root), models="none")
    for writer in writers:
        writer.join()
    assert writers and problems == []


def test_a_request_that_arrives_while_apply_reads_the_ledger_waits_for_the_next(
    applied, tmp_path, monkeypatch
):
    """The soak's KeyError: apply read the requests' states, then the pending ids, and a request
    recorded between the two had ids but no state."""
    root = _copy(applied, tmp_path)
    first, late = _train_users(root)[:2]
    rid, real, arrivals = request(root, users=[first]), rollout.states, []

    def states_then_a_request(rows):
        found = real(rows)
        if not arrivals:
            arrivals.append(threading.Thread(target=request, args=(root,), kwargs={"users": [late]}))  # fmt: skip
            arrivals[0].start()
            arrivals[0].join(1.0)  # recorded at once, unless apply's snapshot holds it off
        return found

    monkeypatch.setattr(rollout, "states", states_then_a_request)
    [outcome] = apply(root)
    arrivals[0].join()
    assert outcome["id"] == rid and outcome["state"] == "purged"
    [waiting] = pending_requests(root)
    assert waiting["state"] == "received" and waiting["attempts"] == 0


# ---- 7: apply removes what it recorded making, nothing else ----------------------------------


def test_apply_leaves_files_named_like_its_own(applied, tmp_path):
    root = _copy(applied, tmp_path)
    theirs = [
        root / ".ledger.sqlite.original",
        root / "data" / ".train.jsonl.20261205",
        root / "models" / ".staging-mine" / "notes",
        root / "models" / ".staging-1a2b3c4d" / "notes",
    ]
    for path in theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the operator's")
    ours = Layout(root).temporary(root / "data" / "valid.jsonl")  # as a killed write left it
    ours.write_text("half a file")
    [outcome] = apply(root, requests=[request(root, users=[_train_users(root)[0]])])
    assert outcome["state"] == "purged" and not ours.exists()
    assert all(p.read_text() == "the operator's" for p in theirs)
    assert verify(root)["ok"], verify(root)


# ---- 8: the backbone outside the deployment is vouched for ----------------------------------


def test_a_replaced_backbone_is_caught_before_a_retrain_builds_on_it(tmp_path, source, trained):
    base, original = tmp_path / "base", tmp_path / "original"
    shutil.copytree(trained["base"], base)
    shutil.copytree(trained["original"], original)
    report = json.loads((original / "train_report.json").read_text())
    (original / "train_report.json").write_text(json.dumps({**report, "base": str(base)}))
    root = tmp_path / "d"
    init(source, original, root, options=OPTIONS)
    assert verify(root)["ok"]
    weights = next(base.glob("*.safetensors"))  # other weights: the tuned model's
    shutil.copy(next(original.glob("*.safetensors")), weights)
    problems = verify(root)["problems"]
    assert any(f"the backbone {base} is not the one hashed at init" in p for p in problems)
    request(root, users=[HIDDEN])
    with pytest.raises(Tampered, match="is not the one hashed at init"):
        apply(root, method="retrain")


# ---- lower ------------------------------------------------------------------------------------


def test_a_purge_that_fails_after_the_switch_is_counted_and_left(
    tmp_path, source, model, monkeypatch
):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    rid = request(root, users=[HIDDEN])

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rollout, "purge_folder", disk_full)
    with pytest.raises(OSError):
        apply(root)
    [view] = pending_requests(root)
    assert view["id"] == rid and view["state"] == "applied"
    assert view["attempts"] == 1 and view["error"] == "OSError"
    assert view["verification"]["passed"]  # the numbers of the version it is live in stay
    assert status(root)["live"] == "v1" and verify(root)["ok"], verify(root)
    assert worker_pending(root, max_attempts=1) == []  # the worker leaves it to the operator
    monkeypatch.undo()
    [done] = apply(root)
    assert done["state"] == "purged" and done["attempts"] == 1 and verify(root)["ok"]


def test_a_bad_option_is_refused_before_any_request_is_touched(applied, tmp_path, capsys):
    root = _copy(applied, tmp_path)
    rid = request(root, users=[_train_users(root)[0]])
    rows = _rows(root)
    with pytest.raises(ValueError, match="lr must be positive"):
        apply(root, options={"lr": 0})
    assert main(["apply", "--deploy", str(root), "--set", "lr=0"]) == 2
    assert "lr must be positive" in capsys.readouterr().err
    assert _rows(root) == rows and pending_requests(root)[0]["attempts"] == 0
    assert pending_requests(root)[0]["id"] == rid


def test_a_deletion_that_leaves_few_held_out_samples_is_verified_with_what_there_is(
    tmp_path, source, model
):
    data = tmp_path / "data"
    shutil.copytree(source, data)
    test = [s for s in read_jsonl(data / "test.jsonl") if s.user != HIDDEN][:3]
    write_jsonl(test, data / "test.jsonl")
    root = tmp_path / "d"
    init(data, model, root, options=OPTIONS)
    request(root, users=[HIDDEN])
    [outcome] = apply(root)
    assert outcome["state"] == "purged" and outcome["verification"]["passed"]
    assert "only 3 held-out samples in test.jsonl" in outcome["verification"]["limited"]
    assert outcome["verification"]["mia_auc"] is None


def test_locks_follow_no_link_and_truncate_nothing(applied, tmp_path):
    root = _copy(applied, tmp_path)
    config = (root / "config.json").read_bytes()
    for lock in ("apply.lock", "request.lock"):
        (root / lock).unlink(missing_ok=True)
        (root / lock).symlink_to("config.json")
    with pytest.raises(ValueError, match="apply.lock: cannot be opened as a lock"):
        apply(root)
    with pytest.raises(ValueError, match="request.lock: cannot be opened as a lock"):
        request(root, users=[_train_users(root)[0]])
    assert (root / "config.json").read_bytes() == config


@pytest.mark.parametrize(
    "key, mode, message",
    [
        (b"0" * 40, 0o600, "not a random key"),
        (os.urandom(32), 0o644, "open to other users"),
        (None, 0o600, "inside"),  # the training data given as the key
    ],
    ids=["forty-zeros", "world-readable", "train-jsonl"],
)
def test_init_refuses_weak_shared_or_misplaced_keys(tmp_path, source, model, key, mode, message):
    data = tmp_path / "data"
    shutil.copytree(source, data)
    path = data / "train.jsonl" if key is None else tmp_path / "key"
    if key is not None:
        path.write_bytes(key)
    path.chmod(mode)
    with pytest.raises(ValueError, match=message):
        init(data, model, tmp_path / "d", options=OPTIONS, key_file=path)
    assert not (tmp_path / "d").exists()


def test_a_restored_older_ledger_fails_against_the_head_kept(tmp_path, source, model):
    before = tmp_path / "before"
    init(source, model, before, options=OPTIONS)
    request(before, users=[HIDDEN])
    after = tmp_path / "after"
    shutil.copytree(before, after)
    apply(after)
    head = status(after)["ledger"]["hash"]
    assert verify(after, expect_head=head)["ok"] and verify(after, expect_head=head[:16])["ok"]
    for name in ("ledger.sqlite", "LIVE"):  # yesterday's backup of the ledger, LIVE, the data
        shutil.copy(before / name, after / name)
    shutil.rmtree(after / "data")
    shutil.copytree(before / "data", after / "data")
    assert verify(after)["ok"]  # every other check passes
    result = verify(after, expect_head=head)
    assert any(f"no row with the head {head[:16]}" in p for p in result["problems"]), result
    with pytest.raises(ValueError, match="16 or more hex digits"):
        verify(after, expect_head="abc")


def test_write_jsonl_syncs_before_it_renames(tmp_path, monkeypatch):
    calls = []
    fsync, replace_file = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("replace") or replace_file(a, b))
    rows = [Sample("prompt", YES, "u", "i", 5.0, 0)]
    write_jsonl(rows, tmp_path / "train.jsonl")
    assert calls == ["fsync", "replace"] and read_jsonl(tmp_path / "train.jsonl") == rows


def test_the_soak_fails_when_it_killed_fewer_children_than_asked():
    path = Path(__file__).parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    ran = {"lost": 0, "ledger_verify_ok": True, "forgotten_rows_left": 0, "args": {"kills": 3}}
    assert soak.failures({**ran, "kills": 3}) == []
    assert soak.failures({**ran, "kills": 0}) == ["killed the apply child 0 time(s), not the 3 asked"]  # fmt: skip
