"""The ledger's events are declared once (deploy/events.py): a row naming an undeclared event or
detail is refused, and a typed event hashes as the plain name older rows were written with."""

from __future__ import annotations

import pytest

from e2urec.deploy.events import DETAILS, Event
from e2urec.deploy.ledger import Ledger


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
