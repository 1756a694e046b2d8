"""The deployment's ledger: an append-only, hash-chained SQLite table of what happened to requests.

Triggers refuse UPDATE and DELETE on it (against mistakes: whoever can write the file can drop
them). Each row carries the SHA-256 of the row before it, so editing or deleting a row breaks
the chain; a one-row `head` table, written in the same transaction, holds the row count and last
hash, so deleting the newest rows is caught too. Someone who rewrites the whole chain is caught
only by `verify`'s consistency checks, or by comparing the head with a copy kept elsewhere.
The `pending` table holds the ids of requests not yet purged: they go in the same transaction
as their "received" row and leave with their "purged" or "refused" row (a request ends in one of
the two), and `secure_delete` overwrites them in the file when they go. A "failed" row records an
attempt that did not finish (its error's kind); the request stays pending and is tried again.
An "enforced" row (no request) records forgotten rows found back in the data and removed again.
In a two-phase deployment (`init --exact apa`) a purged request goes on to its exact phase: a
"retrained" row (the exact model verified, with the shards it retrained) and an "exact" row
(that model live); a failed exact attempt is a "failed" row marked `"phase": "exact"`.
Each event, what its details may hold and the order a request's events come in are declared
once, in deploy/events.py; rows are read back as `Row`s.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from e2urec.deploy.events import BUILT, DETAILS, Event, check, in_order

FIELDS = (
    "time",
    "event",
    "request",
    "method",
    "users",
    "samples",
    "model_before",
    "model_after",
    "version",
    "details",
)
COLUMNS = ("seq", *FIELDS, "prev_hash", "hash")  # the table's, in order
GENESIS = "0" * 64
# A request as `status` shows it. state: its last event of the approximate phase;
# received/applied/purged/exact: times. phase (two-phase deployments only): pending, approximate
# (purged, the approximate model live) or exact (the exactly retrained model live).
VIEW = (
    "state",
    "received",
    "applied",
    "purged",
    "users",
    "samples",
    "interactions",
    "method",
    "version",
    "model_before",
    "model_after",
    "verification",
    "forgetting",
    "reason",
    "attempts",
    "error",
    "phase",
    "shards",
    "exact",
    "exact_version",
    "exact_attempts",
    "exact_error",
)
CANCELLED = "cancelled by the operator"
ALREADY = "already purged by an earlier request"
UNTRAINED = "nothing of it in the training data: purged from the other splits, nothing to unlearn"
SCHEMA = f"""
CREATE TABLE ledger (seq INTEGER PRIMARY KEY, {", ".join(FIELDS)}, prev_hash TEXT, hash TEXT);
CREATE TABLE head (id INTEGER PRIMARY KEY CHECK (id = 1), rows INTEGER, hash TEXT);
CREATE TABLE pending (request TEXT PRIMARY KEY, body TEXT);
INSERT INTO head VALUES (1, 0, '{GENESIS}');
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def row_hash(prev_hash: str, row: dict) -> str:
    body = json.dumps({f: row.get(f) for f in FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


@dataclass(frozen=True)
class Row:
    """A ledger row as read back (COLUMNS): its event one of those declared, its details parsed.
    `checked` shares its rows between callers: read their details, never change them."""

    seq: int
    time: str
    event: Event
    request: str | None
    method: str | None
    users: int | None
    samples: int | None
    model_before: str | None
    model_after: str | None
    version: str | None
    details: dict
    prev_hash: str
    hash: str

    @classmethod
    def read(cls, stored: dict, details: dict) -> Row:
        """`stored` as `Ledger.rows` gives it; ValueError for an event no longer declared."""
        return cls(**{**stored, "event": Event(stored["event"]), "details": details})

    def followed_by(self, event: Event) -> dict:
        """The row after a verified (or retrained) one: the same request, method, counts,
        models and version."""
        return {
            "event": event,
            "request": self.request,
            "method": self.method,
            "users": self.users,
            "samples": self.samples,
            "model_before": self.model_before,
            "model_after": self.model_after,
            "version": self.version,
        }


class Corrupt(ValueError):
    """The ledger file is not a readable ledger (truncated, overwritten, not SQLite)."""


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{path}: no ledger")
        # Autocommit mode: every write below opens its own BEGIN IMMEDIATE transaction.
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            self.db.execute("PRAGMA secure_delete = ON")
            self.db.execute("SELECT rows, hash FROM head").fetchone()
            self.db.execute("SELECT COUNT(*) FROM ledger").fetchone()
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise Corrupt(
                f"{path}: not a readable ledger ({err}); restore it from a backup"
            ) from None

    @classmethod
    def create(cls, path: str | Path) -> Ledger:
        db = sqlite3.connect(path)
        db.executescript(SCHEMA)
        db.close()
        return cls(path)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, events: list[dict], add_pending=None, drop_pending=()) -> None:
        """Append `events` (dicts of FIELDS; details a dict) and change `pending`, all or nothing."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            count, prev = db.execute("SELECT rows, hash FROM head").fetchone()
            for event in events:
                check(event)
                row = {f: event.get(f) for f in FIELDS}
                row["time"] = row["time"] or now()
                row["details"] = json.dumps(row["details"] or {}, sort_keys=True)
                digest = row_hash(prev, row)
                count += 1
                names, marks = ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
                values = (count, *(row[f] for f in FIELDS), prev, digest)
                db.execute(f"INSERT INTO ledger ({names}) VALUES ({marks})", values)
                prev = digest
            db.execute("UPDATE head SET rows = ?, hash = ?", (count, prev))
            if add_pending:
                request, body = add_pending
                db.execute("INSERT INTO pending VALUES (?, ?)", (request, json.dumps(body)))
            for request in drop_pending:
                db.execute("DELETE FROM pending WHERE request = ?", (request,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def rows(self) -> list[dict]:
        """The rows as stored (details a JSON string): what the chain's hashes cover."""
        try:
            cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM ledger ORDER BY seq")
            return [dict(zip(COLUMNS, r)) for r in cur]
        except sqlite3.DatabaseError as err:  # a page of the file damaged past the first ones
            raise Corrupt(f"{self.path}: not a readable ledger ({err}); restore it") from None

    def records(self) -> list[Row]:
        try:
            return [Row.read(r, json.loads(r["details"] or "{}")) for r in self.rows()]
        except json.JSONDecodeError as err:
            raise Corrupt(f"{self.path}: a row's details are not JSON ({err})") from None
        except ValueError as err:
            raise Corrupt(f"{self.path}: a row of no declared event ({err})") from None

    def head(self) -> dict:
        count, digest = self.db.execute("SELECT rows, hash FROM head").fetchone()
        return {"rows": count, "hash": digest}

    def pending(self) -> dict[str, dict]:
        found = {}
        for rid, body in self.db.execute("SELECT request, body FROM pending ORDER BY rowid"):
            try:
                found[rid] = json.loads(body)
            except (TypeError, json.JSONDecodeError) as err:
                raise Corrupt(
                    f"{self.path}: the pending ids of request {rid} are not JSON ({err}); "
                    "restore the ledger from a backup"
                ) from None
        return found

    @contextmanager
    def reading(self):
        """One read transaction: a write another process commits meanwhile (an apply's rows, a
        request's) is wholly in or wholly out of every query made inside it."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def checked(self) -> tuple[list[Row], list[str], dict[str, dict]]:
        """`chain_problems()` and the pending ids, read as one snapshot; the rows are read again
        only when the file changed, so a service that checks the ledger every few seconds
        re-reads it only after a write."""
        with self.reading():
            head = self.head()  # the first read takes the snapshot: the file is still until the end
            key = (signature(self.path), tuple(head.values()))
            pending, where = self.pending(), self.path.resolve()
            found = _CHECKED.get(where)
            if found is None or found[0] != key:
                found = _CHECKED[where] = (key, *self.chain_problems())
        return found[1], found[2], pending

    def chain_problems(self) -> tuple[list[Row], list[str]]:
        """Rows and what is wrong with the chain, read as one snapshot: rows and head read
        apart would disagree whenever another process wrote between them."""
        with self.reading():
            stored, head = self.rows(), self.head()
        rows, problems, prev = [], [], GENESIS
        for i, row in enumerate(stored, 1):
            seq = row["seq"]
            if seq != i:
                problems.append(f"row {i}: missing (the next row is numbered {seq})")
            if row["prev_hash"] != prev:
                problems.append(f"row {seq}: does not follow the row before it")
            if row_hash(row["prev_hash"], row) != row["hash"]:
                problems.append(f"row {seq}: its content does not match its hash")
            prev = row["hash"]
            try:
                details = json.loads(row["details"] or "{}")
            except json.JSONDecodeError:
                problems.append(f"row {seq}: its details are not JSON")
                details = {}
            if row["event"] in DETAILS:
                rows.append(Row.read(row, details))
            else:  # left out: every check reads declared events only
                problems.append(f"row {seq}: {row['event']!r} is no declared event")
        if head["rows"] != len(stored) or head["hash"] != prev:
            problems.append(
                f"the ledger head records {head['rows']} rows ending in {head['hash'][:12]}, "
                f"the table has {len(stored)} ending in {prev[:12]}: rows were removed or added"
            )
        return rows, problems


# The last check of each ledger file, with the signature it was made at.
_CHECKED: dict[Path, tuple[tuple, list[Row], list[str]]] = {}


def signature(path: Path) -> tuple:
    """What changes when the file is written: SQLite's file change counter (header bytes 24-27,
    bumped by every commit), and the file's inode, size and modification time (an edit by
    another tool)."""
    info = path.stat()
    with path.open("rb") as fh:
        counter = fh.read(28)[24:]
    return (info.st_ino, info.st_size, info.st_mtime_ns, counter)


def versions(rows: list[Row]) -> dict[str, dict]:
    """Model versions the ledger vouches for: the initial one and each verified unlearned one."""
    found: dict[str, dict] = {}
    for row in rows:
        if row.event in BUILT and row.version not in found:
            found[row.version] = {"hash": row.model_after, "created": row.time}
    return found


@dataclass
class State:
    """A request as its rows tell it: its last event, its newest row of each event, and the
    version it went to."""

    event: Event
    rows: dict[Event, Row] = field(default_factory=dict)
    version: str | None = None


def rolling(state: State) -> bool:
    """A request verified into a new version and not yet purged: it rolls forward, whatever
    failed attempts (of the switch or the purge) follow its "verified" row."""
    return Event.VERIFIED in state.rows and Event.PURGED not in state.rows


def states(rows: list[Row]) -> dict[str, State]:
    found: dict[str, State] = {}
    for row in rows:
        if row.request:
            state = found.setdefault(row.request, State(row.event))
            state.event, state.rows[row.event] = row.event, row
            state.version = row.version or state.version
    return found


def request_views(rows: list[Row]) -> dict[str, dict]:
    """What `status` shows of each request (VIEW; None where it has not got that far)."""
    views: dict[str, dict] = {}
    two_phase = any(r.event == Event.CREATED and r.details.get("exact") for r in rows)
    for row in rows:
        rid, kind = row.request, row.event
        if not rid:
            continue
        view = views.setdefault(rid, {"id": rid, **dict.fromkeys(VIEW), "attempts": 0})
        if two_phase:
            _phase(view, row)
        if view["purged"] is not None:  # the exact phase's rows leave the request's state
            continue
        # A failure once the request is in a verified version leaves it rolling forward.
        rolled = view["state"] in (Event.VERIFIED, Event.APPLIED)
        if kind != Event.FAILED or not rolled:
            view["state"] = "retrying" if kind == Event.FAILED else kind.value  # plain JSON
        if kind == Event.RECEIVED or (kind == Event.REFUSED and view["received"] is None):
            view.update(received=row.time, users=row.users, samples=row.samples)
            view["interactions"] = row.details.get("interactions")
        if kind == Event.REFUSED or (kind == Event.PURGED and row.details.get("reason")):
            view["reason"] = row.details["reason"]
        if kind == Event.FAILED:
            view["attempts"] += 1
            view["error"] = row.details.get("error")
        if kind == Event.VERIFIED or (kind == Event.FAILED and not rolled):
            view["method"] = row.method
            view["model_before"], view["model_after"] = row.model_before, row.model_after
            view["verification"] = row.details.get("verification")
            view["forgetting"] = (view["verification"] or {}).get("forgetting")
        if kind in (Event.APPLIED, Event.PURGED):
            view[kind.value] = row.time
            view["version"] = row.version
    return views


def _phase(view: dict, row: Row) -> None:
    """A two-phase deployment's view of a request: its phase and the exact phase's rows."""
    kind = row.event
    if view["phase"] is None:
        view["phase"], view["exact_attempts"] = "pending", 0
    if kind == Event.PURGED:
        view["phase"], view["shards"] = "approximate", row.details.get("shards")
    elif kind == Event.FAILED and view["purged"] is not None:
        view["exact_attempts"] += 1
        view["exact_error"] = row.details.get("error")
    elif kind == Event.RETRAINED:
        view["exact_version"], view["exact_error"] = row.version, None
    elif kind == Event.EXACT:
        view["phase"], view["exact"] = "exact", row.time
    elif kind == Event.REFUSED:
        view["phase"] = None


def order_problems(rows: list[Row], pending: set[str]) -> list[str]:
    """Requests whose events skip or repeat a step (events.NEXT), or whose ids are kept when
    the request is finished (or gone when it is not). One pass over the rows: a ledger of many
    requests."""
    events: dict[str, list[Event]] = {}
    for row in rows:
        if row.request:
            events.setdefault(row.request, []).append(row.event)
    problems = []
    for rid, seq in events.items():
        finished = seq[-1] == Event.REFUSED or Event.PURGED in seq
        if not in_order(seq):
            problems.append(f"request {rid}: events out of order: {', '.join(seq)}")
        elif finished == (rid in pending):
            kept = "still keeps" if finished else "no longer has"
            problems.append(f"request {rid}: {seq[-1]}, but the ledger {kept} its ids")
    return problems
