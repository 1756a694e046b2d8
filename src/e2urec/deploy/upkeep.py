"""What `apply` does around an unlearning run: record a failed attempt, tidy what a crashed run
of ours left (and nothing else), enforce recorded deletions on data restored from a backup, and
complete the requests an earlier request already purged.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from e2urec.deploy import integrity
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Layout
from e2urec.deploy.ledger import ALREADY, UNTRAINED, Ledger, rolling, states, versions
from e2urec.deploy.purge import eraser_of, read_split, write_kept


def record_attempt(layout: Layout, ledger: Ledger, ids, method, error: str, numbers=None):
    """A "failed" row for each of `ids` (None: all pending) still waiting: the attempt and its
    error's kind (a message may quote ids; the ledger never holds them in clear). Best effort:
    with the disk full it cannot be written, and the requests stay pending all the same."""
    with contextlib.suppress(Exception):
        # Every request still pending, one already verified included: a switch or a purge that
        # fails is an attempt too (counted, shown, and the worker backs off).
        waiting = [r for r in ledger.pending() if ids is None or r in ids]
        rows = ledger.records()
        last, recorded = states(rows), versions(rows)
        before = recorded.get(layout.live(), {}).get("hash")
        method = method or layout.config()["method"]
        events = [
            {
                "event": Event.FAILED,
                "request": r,
                "method": method,
                "users": last[r].rows[Event.RECEIVED].users,
                "samples": last[r].rows[Event.RECEIVED].samples,
                "model_before": before,
                "details": {"verification": numbers, "error": error},
            }
            for r in waiting
        ]
        if events:
            ledger.append(events)


def tidy(layout: Layout, ledger: Ledger) -> None:
    """Remove what a crashed run of ours left, by the exact names it recorded before creating
    them (`Layout.reserve`): its staging folders (but those a verified run still rolls forward
    from) and temporary files. Nothing else: the folder may hold the operator's files."""
    found = states(ledger.records()).values()
    keep = {st.rows[Event.VERIFIED].details.get("staging") for st in found if rolling(st)}
    exact = [st.rows[Event.RETRAINED] for st in found if Event.RETRAINED in st.rows and Event.EXACT not in st.rows]  # fmt: skip
    keep |= {row.details.get("staging") for row in exact}
    kept = []
    for path in layout.reserved():
        if path.name in keep:
            kept.append(path)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    # Rewritten in place: a crash part-way loses names of what is already gone (or of staging
    # folders the ledger names anyway), never an operator's file.
    with open(layout.scratch_file, "w", encoding="utf-8") as fh:
        fh.writelines(f"{p.relative_to(layout.root).as_posix()}\n" for p in kept)
        fh.flush()
        os.fsync(fh.fileno())


def enforce(layout: Layout, ledger: Ledger, restorable: dict) -> None:
    """Remove forgotten rows found back in the data (a split restored from a backup)."""
    if not restorable:
        return
    sizes = {name: len(read_split(layout.data / name)) for name in restorable}
    removed = {name: sizes[name] - len(kept) for name, kept in restorable.items()}
    write_kept(layout.data, restorable, None, layout.temporary)
    data = integrity.digests(integrity.read_splits(layout.data))
    ledger.append([{"event": Event.ENFORCED, "details": {"removed": removed, "data": data}}])


def complete_already_purged(layout: Layout, ledger: Ledger, ids: list[str], shards=None):
    """Complete the requests none of whose train samples are left (an earlier request purged
    them with its own, or they never had any: a user or rating only in the held-out splits),
    so that they never block a run: no model learned from what is left of them, and the purge
    removes it from every split. Returns the others. `shards` (a two-phase deployment):
    request bodies -> {request: the shards its exact phase retrains}."""
    bodies, train = ledger.pending(), read_split(layout.data / "train.jsonl")
    union = eraser_of(bodies[r] for r in ids)
    touched = [s for s in train if union.erases(s)]  # one pass over the data, not one per request
    done = [r for r in ids if not any(eraser_of([bodies[r]]).erases(s) for s in touched)]
    if not done:
        return ids
    eraser, splits = eraser_of(bodies[r] for r in done), integrity.read_splits(layout.data)
    kept = {name: [s for s in samples if not eraser.erases(s)] for name, samples in splits.items()}
    removed = {name: len(splits[name]) - len(kept[name]) for name in splits}
    details = {"removed": removed, "data": integrity.digests(kept)}
    live, received = layout.live(), states(ledger.records())
    # The rows first: a crash before the files are rewritten leaves rows of purged requests in
    # the data, which the next apply's enforcement removes (their HMACs are in the ledger).
    exact = shards({r: bodies[r] for r in done}) if shards else {}
    rows = purged_rows(done, live, details, exact)
    for row in rows:
        trained = received[row["request"]].rows[Event.RECEIVED].samples
        row["details"]["reason"] = ALREADY if trained else UNTRAINED
    ledger.append(rows, drop_pending=done)
    changed = {name: kept[name] for name in kept if removed[name]}
    if changed:
        write_kept(layout.data, changed, eraser, layout.temporary)
    return [r for r in ids if r not in done]


def purged_rows(ids, version: str, details: dict, exact: dict) -> list[dict]:
    """The "purged" row of each request, with its exact phase's shards where there is one."""
    return [
        {
            "event": Event.PURGED,
            "request": r,
            "version": version,
            "details": {**details, **exact.get(r, {})},
        }
        for r in ids
    ]
