"""`apply`: carry out every pending deletion request of a deployment in one unlearning run.

First it checks what it would build on (`integrity.preflight`: ledger, live model and its base
chain, key, data) and refuses if anything fails; forgotten rows found back in the data are
removed again. Requests whose data an earlier request already purged are completed as such.
Then it goes through named steps; a crash after any of them leaves a state the next `apply`
completes. Until the "verified" rows are written the new version is only a staging folder and
the next run starts over (removing it); from then on it rolls forward: name the folder as its
version, switch the live pointer, write "applied" rows, purge the data (idempotent), then write
"purged" rows and drop the requests' ids in one transaction. A run that fails (an error, a
verification that does not pass) writes "failed" rows and leaves its requests pending.
In a two-phase deployment (`init --exact apa`) the exact phase (`exact_phase`) follows.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING

from e2urec.config import from_dict
from e2urec.deploy import exact_phase, integrity
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Layout, locked, tree_hash
from e2urec.deploy.ledger import Ledger, request_views, rolling, states, versions
from e2urec.deploy.purge import Eraser, eraser_of, purge_folder, read_split
from e2urec.deploy.upkeep import (
    complete_already_purged,
    enforce,
    purged_rows,
    record_attempt,
    tidy,
)

# Modules that load torch are imported inside the unlearning run only, so that rolling a crashed
# run forward (and `request` and `status`, which import this module) start quickly.
if TYPE_CHECKING:
    from e2urec.methods import Task

CRASH_ENV = "E2UREC_CRASH_AT"  # fault injection for the crash tests: the step to die after
STEPS = (
    "selected",
    "unlearned",
    "checked",
    "recorded",
    "promoted",
    "switched",
    "applied",
    "purging",
    "purged-data",
)  # the exact phase's steps: exact_phase.STEPS
PHASES = ("approximate", "exact")  # of a two-phase deployment (init --exact)


def _checkpoint(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os._exit(137)  # as kill -9: no cleanup, no finally blocks


def apply(
    deploy, method=None, options=None, requests=None, max_attempts=None, phase=None
) -> list[dict]:
    """Carry out every pending request (or those of `requests`; with `max_attempts`, those that
    failed fewer times) in one unlearning run: unlearn, verify, switch the live version, purge
    the data. Requests a crash left half done are completed first. `method` and `options` (with
    an optional "verify" mapping over the deployment's bounds) replace the deployment's for this
    run. In a two-phase deployment the exact phase of every request carried out approximately
    follows; `phase` ("approximate" or "exact") runs only that one (a step a crash left half
    done is completed whatever it was). Returns what `status` shows of each request handled."""
    layout = Layout.of(deploy)
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if phase is not None and not exact_phase.enabled(layout):
        raise ValueError(f"{deploy}: a deployment made without --exact has one phase only")
    with locked(layout.lock_file), Ledger(layout.ledger) as ledger:
        if method is not None or options is not None:
            # A bad option is the caller's mistake, refused before any request is touched.
            _run_settings(layout.config(), method, options, check=True)
        try:
            return _apply(layout, ledger, method, options, requests, max_attempts, phase)
        except (integrity.Tampered, exact_phase.Failed):
            raise  # refused before anything, or the exact phase recorded its own failure
        except Exception as err:  # whatever failed, the requests wait, the attempt recorded
            record_attempt(layout, ledger, requests, method, type(err).__name__)
            raise


def _apply(layout: Layout, ledger: Ledger, method, options, requests, max_attempts, phase):
    restorable = integrity.preflight(layout)  # a refusal changes nothing, leftovers included
    tidy(layout, ledger)
    enforce(layout, ledger, restorable)
    with ledger.reading():  # one snapshot: a request arriving meanwhile waits for the next apply
        state, pending = states(ledger.records()), list(ledger.pending())
    handled = []
    started: dict[str, list[str]] = {}  # version -> requests already verified into it
    for rid in pending:
        if rolling(state[rid]):
            started.setdefault(state[rid].version, []).append(rid)
    for version, ids in started.items():
        handled += _finish(layout, ledger, ids, version)
    two_phase = exact_phase.enabled(layout)
    if two_phase:  # before any new version, so that versions follow one another
        handled += exact_phase.roll_forward(layout, ledger, _checkpoint)
    views = request_views(ledger.records())
    fresh = [r for r in pending if not rolling(state[r])]
    fresh = [r for r in fresh if requests is None or r in requests]
    fresh = [r for r in fresh if max_attempts is None or views[r]["attempts"] < max_attempts]
    if phase != "exact":
        shards = _shards(layout, ledger) if two_phase else None
        left = complete_already_purged(layout, ledger, fresh, shards)
        handled += [r for r in fresh if r not in left]
        if left:
            handled += _run(layout, ledger, left, method, options)
    if two_phase and phase != "approximate":
        bounds = _run_settings(layout.config(), None, None)[2]
        handled += exact_phase.run(layout, ledger, _checkpoint, bounds)
    return _views(ledger, list(dict.fromkeys(handled)))


def _shards(layout: Layout, ledger: Ledger):
    """Request bodies -> the shards each one's exact phase retrains (read before the ids go)."""
    return lambda bodies: exact_phase.shard_details(layout, ledger.records(), bodies)


def _run_settings(config: dict, method: str | None, options, check: bool = False):
    """(method, its options, verification Bounds) of a run; with `check`, the method's options
    are also checked (ValueError)."""
    from e2urec.deploy.verification import Bounds

    opts = dict(options) if options is not None else None
    if opts is None:
        opts = dict(config["options"]) if method in (None, config["method"]) else {}
    verify_opts = {**config["verify"], **(opts.pop("verify", None) or {})}
    bounds = from_dict(Bounds, verify_opts, "verify")
    if check:
        from e2urec.methods import get_method

        get_method(method or config["method"], opts)
    return method or config["method"], opts, bounds


def _run(layout: Layout, ledger: Ledger, ids: list[str], method, options) -> list[str]:
    """A fresh run for requests only received: unlearn, verify, then promote or fail."""
    from e2urec.deploy.verification import verify
    from e2urec.methods import get_method

    config = layout.config()
    method, opts, bounds = _run_settings(config, method, options)
    unlearner = get_method(method, opts)
    before = layout.live()
    eraser = eraser_of(ledger.pending()[r] for r in ids)
    task, held_name, holdout = _task(layout, config, eraser)
    _checkpoint("selected")
    result = unlearner.unlearn(task)
    _checkpoint("unlearned")
    reference = _reference(layout, task) if bounds.retrain else None
    args = (task.forget, task.retain, holdout, held_name, bounds, reference)
    exact = None if unlearner.needs_original else method
    numbers = verify(task.original, result.model, *args, exact=exact)
    if reference is not None:
        shutil.rmtree(reference)
    _checkpoint("checked")
    received = states(ledger.records())
    details = {
        "verification": numbers,
        "run": {
            "requests": len(ids),
            "forget": len(task.forget),
            "retain": len(task.retain),
            "unlearning_seconds": round(result.seconds, 2),
            "options": opts,
        },
        "staging": task.out.name,
        "data_after": _purged_digests(layout, eraser),
    }
    recorded = versions(ledger.records())

    def event(rid: str, kind: Event, **extra) -> dict:
        got = received[rid].rows[Event.RECEIVED]
        return {
            "event": kind,
            "request": rid,
            "method": method,
            "users": got.users,
            "samples": got.samples,
            "model_before": recorded[before]["hash"],
            "details": details,
            **extra,
        }

    if not numbers["passed"]:
        record_attempt(layout, ledger, ids, method, "VerificationFailed", numbers)
        shutil.rmtree(task.out)
        return ids
    version = layout.next_version(recorded)
    details["chain"] = integrity.chain(layout, task.out)
    digest = tree_hash(task.out)
    ledger.append([event(r, Event.VERIFIED, model_after=digest, version=version) for r in ids])
    _checkpoint("recorded")
    return _finish(layout, ledger, ids, version)


def _purged_digests(layout: Layout, eraser: Eraser) -> dict[str, str]:
    """The data digests the purge of this run will leave (recorded before it starts)."""
    splits = integrity.read_splits(layout.data)
    kept = {name: [s for s in samples if not eraser.erases(s)] for name, samples in splits.items()}
    return integrity.digests(kept)


def _task(layout: Layout, config: dict, eraser: Eraser) -> tuple[Task, str, list]:
    """The unlearning task on the live version and data, and the held-out samples (their
    file's name too) for verification, without any the requests erase."""
    from e2urec.data.manifest import read_answers
    from e2urec.methods import Task
    from e2urec.model.train import TrainConfig

    data = layout.data
    train, valid = read_split(data / "train.jsonl"), read_split(data / "valid.jsonl")
    held_name = "holdout.jsonl" if (data / "holdout.jsonl").exists() else "test.jsonl"
    holdout = [s for s in read_split(data / held_name) if not eraser.erases(s)]
    # The purge's own rule: what the model unlearns is exactly what the data loses.
    forget = [s for s in train if eraser.erases(s)]
    retain = [s for s in train if not eraser.erases(s)]
    task = Task(
        str(layout.version(layout.live())),
        retain,
        forget,
        valid,
        layout.reserve(layout.models / f".staging-{uuid.uuid4().hex[:8]}"),
        base=layout.base_path(config),
        train_config=from_dict(TrainConfig, config.get("train_config"), "train"),
        answers=read_answers(data),
    )
    return task, held_name, holdout


def _reference(layout: Layout, task: Task) -> str:
    """Retrain on the retain set, beside the staging folder (tidied away with it)."""
    from e2urec.methods import get_method

    out = layout.reserve(task.out.with_name(task.out.name + "-retrain"))
    return get_method("retrain").unlearn(replace(task, out=out)).model


def _finish(layout: Layout, ledger: Ledger, ids: list[str], version: str) -> list[str]:
    """Roll a verified run forward: the staging folder named as its version, live pointer,
    "applied" rows, purge, "purged" rows."""
    state = states(ledger.records())
    staging = state[ids[0]].rows[Event.VERIFIED].details.get("staging")  # none before issue 26
    if staging and not layout.version(version).exists():
        os.replace(layout.models / staging, layout.version(version))
    _checkpoint("promoted")
    layout.set_live(version)
    _checkpoint("switched")
    todo = [r for r in ids if Event.APPLIED not in state[r].rows]
    applied = [state[r].rows[Event.VERIFIED].followed_by(Event.APPLIED) for r in todo]
    if applied:
        ledger.append(applied)
    _checkpoint("applied")
    bodies = ledger.pending()
    eraser = eraser_of(bodies[r] for r in ids)
    after = lambda: _checkpoint("purging")  # noqa: E731
    removed = purge_folder(layout.data, eraser, after, layout.temporary)
    _checkpoint("purged-data")
    details = {"removed": removed, "data": integrity.digests(integrity.read_splits(layout.data))}
    exact = _shards(layout, ledger)({r: bodies[r] for r in ids}) if exact_phase.enabled(layout) else {}  # fmt: skip
    ledger.append(purged_rows(ids, version, details, exact), drop_pending=ids)
    return ids


def _views(ledger: Ledger, ids: list[str]) -> list[dict]:
    views = request_views(ledger.records())
    return [views[r] for r in ids]
