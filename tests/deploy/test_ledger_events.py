"""The ledger's events are declared once (deploy/events.py): a row naming an undeclared event or
detail is refused, a typed event hashes as the plain name older rows were written with, and rows
are read back as `Row`s, whose event is one of those declared."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from e2urec.deploy.events import DETAILS, Event, in_order
from e2urec.deploy.ledger import COLUMNS, Corrupt, Ledger, Row, order_problems


def test_an_undeclared_event_or_detail_is_refused_and_nothing_written(tmp_path):
    with Ledger.create(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(ValueError, match="received rows record no secret"):
            ledger.append([{"event": Event.RECEIVED, "request": "r-1", "details": {"secret": 1}}])
        with pytest.raises(ValueError, match="unknown ledger event 'renamed'"):
            ledger.append([{"event": "renamed", "request": "r-1"}])
        assert ledger.rows() == [] and ledger.head()["rows"] == 0


def test_a_typed_event_is_stored_and_hashed_as_its_name(tmp_path):
    row = {"event": "received", "request": "r-1", "time": "t", "details": {"interactions": 0}}
    hashes = []
    for name, event in (("plain", "received"), ("typed", Event.RECEIVED)):
        with Ledger.create(tmp_path / f"{name}.sqlite") as ledger:
            ledger.append([{**row, "event": event}])
            (stored,) = ledger.rows()
        assert type(stored["event"]) is str and stored["event"] == "received"
        hashes.append(stored["hash"])
    assert hashes[0] == hashes[1]
    assert set(DETAILS) == set(Event)


def test_rows_are_read_back_typed(tmp_path):
    row = {"event": Event.RECEIVED, "request": "r-1", "users": 1, "details": {"interactions": 2}}
    with Ledger.create(tmp_path / "ledger.sqlite") as ledger:
        ledger.append([row])
        (stored,), (read,) = ledger.rows(), ledger.records()
        assert ledger.chain_problems() == ([read], [])
    assert tuple(f.name for f in dataclasses.fields(Row)) == COLUMNS
    assert read.event is Event.RECEIVED and read.details == {"interactions": 2}
    assert (read.request, read.users, read.hash) == ("r-1", 1, stored["hash"])


def test_a_row_of_no_declared_event_is_a_problem(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger.create(path) as ledger:
        ledger.append([{"event": Event.REFUSED, "request": "r-1", "details": {"reason": "x"}}])
    with sqlite3.connect(path) as conn:  # a row renamed, as a forger or an old tool would
        conn.execute("DROP TRIGGER ledger_no_update")
        conn.execute("UPDATE ledger SET event = 'renamed'")
    with Ledger(path) as ledger:
        rows, problems = ledger.chain_problems()
        with pytest.raises(Corrupt, match="no declared event"):
            ledger.records()
    assert rows == [] and "row 1: 'renamed' is no declared event" in problems


def test_a_requests_events_follow_the_declared_order():
    E = Event
    for story in (
        [E.REFUSED],
        [E.RECEIVED, E.FAILED, E.FAILED, E.REFUSED],
        [E.RECEIVED, E.PURGED],
        [E.RECEIVED, E.VERIFIED, E.FAILED, E.APPLIED, E.FAILED, E.PURGED],
        [E.RECEIVED, E.VERIFIED, E.APPLIED, E.PURGED, E.FAILED, E.RETRAINED, E.EXACT],
    ):
        assert all(in_order(story[:n]) for n in range(len(story) + 1)), story
    for story in (
        [E.FAILED],
        [E.RECEIVED, E.APPLIED],
        [E.RECEIVED, E.VERIFIED, E.REFUSED],
        [E.RECEIVED, E.VERIFIED, E.PURGED],
        [E.REFUSED, E.FAILED],
        [E.RECEIVED, E.PURGED, E.RETRAINED, E.FAILED],
        [E.RECEIVED, E.PURGED, E.RETRAINED, E.EXACT, E.EXACT],
    ):
        assert not in_order(story), story
    rows = [Row.read({**dict.fromkeys(COLUMNS), "event": "received", "request": "r-1"}, {})]
    assert order_problems(rows, {"r-1"}) == []
    [problem] = order_problems(rows, set())
    assert problem == "request r-1: received, but the ledger no longer has its ids"
