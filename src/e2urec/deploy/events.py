"""The ledger's events, declared once: each event's name, what its row's `details` may hold, and
which event may follow which in a request's rows.

`Ledger.append` refuses a row naming another event or another detail, so a new detail is added
here first. Rows already written are read as they are (older deployments' rows hold fewer)."""

from __future__ import annotations

from enum import Enum


class Event(str, Enum):  # a str: rows compare and hash as the names they store
    __str__ = str.__str__  # "created", not "Event.CREATED", in messages (StrEnum is 3.11+)

    CREATED = "created"  # a model version made by `init`: v0, and v1 of a two-phase deployment
    RECEIVED = "received"  # a request checked and recorded; its ids go to `pending`
    REFUSED = "refused"  # a request refused at once, or cancelled while it waited
    VERIFIED = "verified"  # the unlearned model passed verification: a new version, not yet live
    APPLIED = "applied"  # that version live
    PURGED = "purged"  # the request's samples gone from every split; its ids dropped
    FAILED = "failed"  # an attempt that did not finish; the request stays pending
    ENFORCED = "enforced"  # forgotten rows found back in the data and removed again
    RETRAINED = "retrained"  # the exact phase's model verified (two-phase deployments)
    EXACT = "exact"  # that model live


DETAILS: dict[Event, frozenset[str]] = {
    Event.CREATED: frozenset(
        {"method", "verify", "key", "chain", "backbone", "data"}  # v0
        | {"exact", "trainable_params", "shard_sizes"}  # v1: the exact method's model
    ),
    Event.RECEIVED: frozenset({"keys", "interactions", "history"}),
    Event.REFUSED: frozenset({"reason", "interactions"}),
    Event.VERIFIED: frozenset({"verification", "run", "staging", "data_after", "chain"}),
    Event.APPLIED: frozenset(),
    Event.PURGED: frozenset({"removed", "data", "shards", "reason"}),
    Event.FAILED: frozenset({"verification", "error", "phase"}),
    Event.ENFORCED: frozenset({"removed", "data"}),
    Event.RETRAINED: frozenset(
        {"phase", "from", "from_hash", "shards", "verification", "chain", "staging", "run"}
    ),
    Event.EXACT: frozenset(),
}
BUILT = (Event.CREATED, Event.VERIFIED, Event.RETRAINED)  # the events that record a new version

# What may follow each event in one request's rows (None: before its first). A failed attempt
# leaves the request where it was, so FAILED may repeat after the events that allow it.
NEXT: dict[Event | None, frozenset[Event]] = {
    None: frozenset({Event.RECEIVED, Event.REFUSED}),  # refused at once
    # refused: cancelled while it waited; purged: already purged by an earlier request
    Event.RECEIVED: frozenset({Event.FAILED, Event.VERIFIED, Event.REFUSED, Event.PURGED}),
    # failed after verified or applied: the switch or the purge; the request rolls forward
    Event.VERIFIED: frozenset({Event.FAILED, Event.APPLIED}),
    Event.APPLIED: frozenset({Event.FAILED, Event.PURGED}),
    Event.PURGED: frozenset({Event.FAILED, Event.RETRAINED}),  # two-phase: the exact phase
    Event.RETRAINED: frozenset({Event.EXACT}),
}


def in_order(events: list[Event]) -> bool:
    """Whether one request's events follow NEXT (a request not finished yet included)."""
    last = None
    for event in events:
        if event not in NEXT.get(last, ()):
            return False
        last = last if event == Event.FAILED else event
    return True


def check(row: dict) -> None:
    """Refuse a row whose event or details are not declared above."""
    if row["event"] not in DETAILS:
        raise ValueError(f"unknown ledger event {row['event']!r}")
    unknown = set(row.get("details") or {}) - DETAILS[Event(row["event"])]
    if unknown:
        raise ValueError(f"{row['event']} rows record no {', '.join(sorted(unknown))}")
