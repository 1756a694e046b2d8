"""What `apply` does around an unlearning run: record a failed attempt, tidy what a crashed run
of ours left (and nothing else), enforce recorded deletions on data restored from a backup, and
complete the requests an earlier request already purged.
"""

from __future__ import annotations

import contextlib
import shutil

from e2urec.deploy import integrity
from e2urec.deploy.folder import TEMPORARY, Layout
from e2urec.deploy.ledger import ALREADY, Ledger, states, versions
from e2urec.deploy.purge import Eraser, read_split, write_kept


def record_attempt(layout: Layout, ledger: Ledger, ids, method, error: str, numbers=None):
    """A "failed" row for each of `ids` (None: all pending) still waiting: the attempt and its
    error's kind (a message may quote ids; the ledger never holds them in clear). Best effort:
    with the disk full it cannot be written, and the requests stay pending all the same."""
    with contextlib.suppress(Exception):
        ids = [r for r in ledger.pending() if ids is None or r in ids]
        rows = ledger.records()
        last, recorded = states(rows), versions(rows)
        waiting = [r for r in ids if last[r]["event"] in ("received", "failed")]
        before = recorded.get(layout.live(), {}).get("hash")
        method = method or layout.config()["method"]
        events = [
            {
                "event": "failed",
                "request": r,
                "method": method,
                "users": last[r]["received"]["users"],
                "samples": last[r]["received"]["samples"],
                "model_before": before,
                "details": {"verification": numbers, "error": error},
            }
            for r in waiting
        ]
        if events:
            ledger.append(events)


def tidy(layout: Layout, ledger: Ledger) -> None:
    """Remove what a crashed run of ours left: staging folders no verified run names, and our
    temporary files (named after the file they were to replace). Nothing else: the folder may
    hold the operator's files."""
    rolling = {
        st[st["event"]]["details"].get("staging")
        for st in states(ledger.records()).values()
        if st["event"] in ("verified", "retrained")
    }
    for folder in layout.models.iterdir():
        if folder.name.startswith(".staging-") and folder.name not in rolling:
            shutil.rmtree(folder)
    for folder in (layout.data, layout.root):
        for tmp in folder.glob(".*"):
            ours = TEMPORARY.match(tmp.name)
            if ours and tmp.is_file() and (folder / ours["name"]).is_file():
                tmp.unlink()


def enforce(layout: Layout, ledger: Ledger, restorable: dict) -> None:
    """Remove forgotten rows found back in the data (a split restored from a backup)."""
    if not restorable:
        return
    sizes = {name: len(read_split(layout.data / name)) for name in restorable}
    removed = {name: sizes[name] - len(kept) for name, kept in restorable.items()}
    write_kept(layout.data, restorable)
    data = integrity.digests(integrity.read_splits(layout.data))
    ledger.append([{"event": "enforced", "details": {"removed": removed, "data": data}}])


def complete_already_purged(layout: Layout, ledger: Ledger, ids: list[str], shards=None):
    """Complete the requests none of whose train samples are left (an earlier request purged
    them with its own), so that they never block a run; return the others. `shards` (a
    two-phase deployment): request bodies -> {request: the shards its exact phase retrains}."""
    bodies, train = ledger.pending(), read_split(layout.data / "train.jsonl")
    union = Eraser.of(bodies[r] for r in ids)
    touched = [s for s in train if union.erases(s)]  # one pass over the data, not one per request
    done = [r for r in ids if not any(Eraser.of([bodies[r]]).erases(s) for s in touched)]
    if not done:
        return ids
    eraser, splits = Eraser.of(bodies[r] for r in done), integrity.read_splits(layout.data)
    kept = {name: [s for s in samples if not eraser.erases(s)] for name, samples in splits.items()}
    removed = {name: len(splits[name]) - len(kept[name]) for name in splits}
    details = {"reason": ALREADY, "removed": removed, "data": integrity.digests(kept)}
    live = layout.live()
    # The rows first: a crash before the files are rewritten leaves rows of purged requests in
    # the data, which the next apply's enforcement removes (their HMACs are in the ledger).
    exact = shards({r: bodies[r] for r in done}) if shards else {}
    ledger.append(
        purged_rows(done, live, details, exact),
        drop_pending=done,
    )
    changed = {name: kept[name] for name in kept if removed[name]}
    if changed:
        write_kept(layout.data, changed, eraser)
    return [r for r in ids if r not in done]


def purged_rows(ids, version: str, details: dict, exact: dict) -> list[dict]:
    """The "purged" row of each request, with its exact phase's shards where there is one."""
    return [
        {
            "event": "purged",
            "request": r,
            "version": version,
            "details": {**details, **exact.get(r, {})},
        }
        for r in ids
    ]
