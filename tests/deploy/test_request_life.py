"""A request's life ends carried out or refused: no poison pill, no lost request, a cancel."""

from __future__ import annotations

import json

import pytest
import test_deploy

from e2urec.cli import main
from e2urec.data.deletion import shown_as, shown_ratings
from e2urec.data.sample import read_jsonl
from e2urec.deploy import NotCancellable, apply, cancel, init, pending_requests, request, status
from e2urec.deploy.integrity import verify
from e2urec.deploy.ledger import ALREADY, CANCELLED, Ledger
from e2urec.methods.base import Method

HIDDEN, OPTIONS = test_deploy.HIDDEN, test_deploy.OPTIONS
source, model = test_deploy.source, test_deploy.model  # the module's fixtures, shared


def _echoed(train):
    """(early, next, last): three train samples of one user (not HIDDEN), the next and the last
    showing the early one's rating; the last is that user's last train sample."""
    for user in sorted({s.user for s in train} - {HIDDEN}):
        mine = [s for s in train if s.user == user]
        last = mine[-1]
        for i, early in enumerate(mine[:-2]):
            nxt = mine[i + 1]
            if nxt is not last and all(shown_as(early) in shown_ratings(t) for t in (nxt, last)):
                return early, nxt, last
    raise AssertionError("no user whose last two prompts show an earlier rating")


def test_a_request_whose_data_an_earlier_one_purged_is_completed_not_a_poison_pill(
    tmp_path,
    source,
    model,
):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    train = read_jsonl(root / "data" / "train.jsonl")
    early, nxt, last = _echoed(train)
    first = request(root, interactions=[(early.user, early.item)])
    late, real = [], Method.unlearn

    def unlearn_while_requests_arrive(self, task):
        if not late:  # accepted while the apply runs: their targets are still in the data
            late.append(request(root, interactions=[(nxt.user, nxt.item)]))
            late.append(request(root, interactions=[(last.user, last.item)]))
            late.append(request(root, users=[HIDDEN]))  # an unrelated user
        return real(self, task)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Method, "unlearn", unlearn_while_requests_arrive)
        [done] = apply(root)
    assert done["id"] == first and done["state"] == "purged"
    outcomes = {o["id"]: o for o in apply(root)}  # on main this raised, and on every retry
    assert set(outcomes) == set(late)
    assert all(o["state"] == "purged" for o in outcomes.values())
    # The last sample went with the first request: its request is completed as such.
    assert outcomes[late[1]]["reason"] == ALREADY and outcomes[late[1]]["version"] == "v1"
    assert outcomes[late[2]]["version"] == "v2" and outcomes[late[2]]["reason"] is None
    left = read_jsonl(root / "data" / "train.jsonl")
    assert not any(s.user == HIDDEN for s in left)
    gone = {(s.user, s.item) for s in (early, nxt, last)}
    assert not gone & {(s.user, s.item) for s in left}
    assert not any(s.user == nxt.user and shown_as(nxt) in shown_ratings(s) for s in left)
    assert verify(root)["ok"], verify(root)
    assert Ledger(root / "ledger.sqlite").pending() == {}


def test_pending_requests_are_listed_and_cancelled(tmp_path, source, model, capsys):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    rid = request(root, users=[HIDDEN])
    assert main(["request", "--deploy", str(root), "--list"]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert shown["id"] == rid and shown["state"] == "received"
    assert main(["request", "--deploy", str(root), "--cancel", rid]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "refused" and out["reason"] == CANCELLED
    assert pending_requests(root) == [] and apply(root) == []
    assert status(root, rid)["requests"][0]["reason"] == CANCELLED
    assert verify(root)["ok"]
    # Cancelled, not forgotten: the user may ask again; a finished request cannot be cancelled.
    again = request(root, users=[HIDDEN])
    apply(root)
    with pytest.raises(NotCancellable, match="only a request waiting"):
        cancel(root, again)
    assert main(["request", "--deploy", str(root), "--cancel", "r-nope"]) == 2
    assert "no request 'r-nope'" in capsys.readouterr().err


def test_an_apply_that_raises_keeps_its_requests_with_the_error_recorded(
    tmp_path, source, model, monkeypatch
):
    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    rid = request(root, users=[HIDDEN])

    def disk_full(self, task):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Method, "unlearn", disk_full)
    for attempt in (1, 2):
        with pytest.raises(OSError):
            apply(root)
        [view] = pending_requests(root)
        assert view["id"] == rid and view["state"] == "retrying"
        assert view["attempts"] == attempt and view["error"] == "OSError"
    assert apply(root, max_attempts=2) == []  # bounded: left to the operator
    monkeypatch.undo()
    [done] = apply(root)
    assert done["state"] == "purged" and done["attempts"] == 2 and verify(root)["ok"]


class Crash(BaseException):
    pass


def test_a_crash_while_completing_an_already_purged_request(tmp_path, source, model, monkeypatch):
    from e2urec.deploy import upkeep

    root = tmp_path / "d"
    init(source, model, root, options=OPTIONS)
    early, _, last = _echoed(read_jsonl(root / "data" / "train.jsonl"))
    request(root, interactions=[(early.user, early.item)])
    late, real = [], Method.unlearn

    def unlearn_while_a_request_arrives(self, task):
        late.append(request(root, interactions=[(last.user, last.item)]))
        return real(self, task)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Method, "unlearn", unlearn_while_a_request_arrives)
        apply(root)
    echoes = [
        s
        for p in (root / "data").glob("*.jsonl")
        if p.name != "train.jsonl" and p.stat().st_size
        for s in read_jsonl(p)
        if s.user == last.user and shown_as(last) in shown_ratings(s)
    ]
    assert echoes  # the already-purged request still removes rows from the other splits

    def crash(*args):
        raise Crash

    monkeypatch.setattr(upkeep, "write_kept", crash)  # after its rows, before the files
    with pytest.raises(Crash):
        apply(root)
    assert status(root, late[0])["requests"][0]["reason"] == ALREADY
    assert any("holds forgotten rows again" in p for p in verify(root)["problems"])
    monkeypatch.undo()
    assert apply(root) == []  # the enforcement completes the purge
    assert verify(root)["ok"], verify(root)
    left = [s for p in (root / "data").glob("*.jsonl") if p.stat().st_size for s in read_jsonl(p)]
    assert not any(s in left for s in echoes)
