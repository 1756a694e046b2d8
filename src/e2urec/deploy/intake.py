"""Deletion requests submitted to a deployment (`request`: checked, then recorded pending),
and what the deployment holds and has done (`status`, `live_model`). `apply`
(e2urec.deploy.apply_loop) carries the pending requests out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

from e2urec.data.deletion import DeletionRequest, listing, shown_texts, unknown
from e2urec.data.manifest import check_interactions
from e2urec.deploy import integrity
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Keyer, Layout, locked
from e2urec.deploy.ledger import CANCELLED, Ledger, request_views, states, versions
from e2urec.deploy.purge import eraser_of


class Refused(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # what the ledger keeps: the message names ids


# ---- request ------------------------------------------------------------------------------


def request(deploy, users: Iterable = (), interactions: Iterable = ()) -> str:
    """Record a deletion request for `users` and/or (user, item) `interactions`; its id.

    The deployment is checked first as `apply` checks it (ledger, LIVE, key, data; not the
    model files): a failure there raises (`Tampered`, `KeyMissing`) and records nothing, since it
    is the operator's to mend, not a refusal of the data subject. Refusals (an empty request,
    ids in none of the live data's splits, already forgotten or already pending) raise `Refused`
    (a ValueError) naming the ids and leave only a "refused" row."""
    layout = Layout.of(deploy)
    users = tuple(dict.fromkeys(str(u).strip() for u in users if str(u).strip()))
    pairs = tuple(dict.fromkeys((str(u).strip(), str(i).strip()) for u, i in interactions))
    rid = f"r-{uuid.uuid4().hex[:12]}"
    # Requests queue for a moment (not behind `apply`): two at once cannot both pass the checks.
    with locked(layout.request_lock, wait=True), Ledger(layout.ledger) as ledger:
        keyed = layout.keyer()
        splits = integrity.intake_check(layout)
        samples = [s for split in splits.values() for s in split]
        try:
            if not users and not pairs:
                raise Refused("empty", "a deletion request needs users or (user, item) pairs")
            if pairs:
                _needs_history(layout.data)
            _refuse(keyed, ledger, DeletionRequest(users, pairs), samples)
        except Refused as err:
            counts = {"users": len(users), "samples": 0}
            details = {"reason": err.reason, "interactions": len(pairs)}
            ledger.append([{"event": Event.REFUSED, "request": rid, **counts, "details": details}])
            raise
        # How each deleted rating shows in the paper prompts of samples that record no history:
        # what lets every later apply find those prompts again should a backup bring them back.
        echoes = shown_texts(samples, pairs)
        body = {"users": list(users), "interactions": [list(p) for p in pairs], "shown": echoes}
        keys = {
            "users": [keyed(u) for u in users],
            "interactions": [keyed(u, i) for u, i in pairs],
            "shown": [keyed(u, text) for u, text in echoes],
        }
        rule, train = eraser_of([body]), splits.get("train.jsonl", [])
        named, erased = (sum(map(test, train)) for test in (rule.names, rule.erases))
        event = {
            "event": Event.RECEIVED,
            "request": rid,
            "users": len(set(users) | {u for u, _ in pairs}),
            "samples": erased,  # what the model unlearns; the other splits are purged too
            "details": {"keys": keys, "interactions": len(pairs), "history": erased - named},
        }
        ledger.append([event], add_pending=(rid, body))
    return rid


def _needs_history(data: Path) -> None:
    try:
        check_interactions(data)
    except ValueError as err:
        raise Refused("no history", str(err)) from None


def _refuse(keyed: Keyer, ledger: Ledger, req: DeletionRequest, samples: list) -> None:
    done = integrity.forgotten(keyed, ledger.records())
    pending = ledger.pending().values()
    wait_users = {u for b in pending for u in b["users"]}
    wait_pairs = {tuple(p) for b in pending for p in b["interactions"]}
    found: dict[str, list[str]] = {"already forgotten": [], "pending": [], "unknown": []}
    for u in req.users:
        if keyed(u) in done.users:
            found["already forgotten"].append(u)
        elif u in wait_users:
            found["pending"].append(u)
    for u, i in req.interactions:
        if keyed(u) in done.users or keyed(u, i) in done.pairs:
            found["already forgotten"].append(f"{u}/{i}")
        elif u in wait_users or (u, i) in wait_pairs:
            found["pending"].append(f"{u}/{i}")
    named = set(found["already forgotten"] + found["pending"])
    bad_users, bad_pairs = unknown(req, samples)  # a user known to any split is known
    found["unknown"] = [u for u in bad_users if u not in named]
    found["unknown"] += [f"{u}/{i}" for u, i in bad_pairs if f"{u}/{i}" not in named]
    what = {
        "unknown": "not in the live data",
        "already forgotten": "already forgotten by an earlier request",
        "pending": "already in a request waiting for `apply`",
    }
    problems = [f"{what[k]}: {listing(v)}" for k, v in found.items() if v]
    if problems:
        reason = ", ".join(k for k, v in found.items() if v)
        raise Refused(reason, "; ".join(problems) + ". Nothing was changed.")


# ---- pending requests: list, cancel ----------------------------------------------------------


def pending_requests(deploy) -> list[dict]:
    """What `status` shows of each request not yet carried out or refused."""
    layout = Layout.of(deploy)
    with Ledger(layout.ledger) as ledger:
        waiting, views = ledger.pending(), request_views(ledger.records())
    return [views[r] for r in waiting]


class NotCancellable(ValueError):
    """The request is not waiting (unknown, finished, or already in a verified model)."""


def cancel(deploy, request_id: str) -> dict:
    """Withdraw a pending request: a "refused" row (cancelled by the operator) and its ids
    dropped. Only while no apply runs (`Busy` otherwise) and before a model was verified
    with it (from then on it rolls forward)."""
    layout = Layout.of(deploy)
    with locked(layout.lock_file), Ledger(layout.ledger) as ledger:
        state = states(ledger.records()).get(request_id)
        if state is None:
            raise NotCancellable(f"no request {request_id!r} in the ledger")
        waiting = state.event in (Event.RECEIVED, Event.FAILED) and Event.VERIFIED not in state.rows
        if request_id not in ledger.pending() or not waiting:
            raise NotCancellable(
                f"request {request_id} is {state.event}: only a request waiting to be applied "
                "can be cancelled"
            )
        got = state.rows[Event.RECEIVED]
        event = {
            "event": Event.REFUSED,
            "request": request_id,
            "users": got.users,
            "samples": got.samples,
            "details": {"reason": CANCELLED, "interactions": got.details.get("interactions")},
        }
        ledger.append([event], drop_pending=[request_id])
        return request_views(ledger.records())[request_id]


# ---- status -------------------------------------------------------------------------------


def status(deploy, request_id: str | None = None) -> dict:
    """Requests (all, or `request_id`'s), model versions and the live one, the ledger's head."""
    layout = Layout.of(deploy)
    with Ledger(layout.ledger) as ledger:
        rows, head = ledger.records(), ledger.head()
    requests = request_views(rows)
    if request_id is not None and request_id not in requests:
        raise ValueError(f"{deploy}: no request {request_id!r} in the ledger")
    live = layout.live()
    built = (Event.VERIFIED, Event.RETRAINED)
    checks = {r.version: r.details.get("verification") for r in rows if r.event in built}
    models = [
        {**info, "id": v, "verification": checks.get(v), "live": v == live}
        for v, info in versions(rows).items()
    ]
    chosen = [requests[request_id]] if request_id else list(requests.values())
    found = {"live": live, "models": models, "requests": chosen, "ledger": head}
    exact = layout.config().get("exact")
    return {**found, "exact": exact} if exact else found  # two-phase deletions (init --exact)


def live_model(deploy) -> Path:
    """The folder of the version being served (`backbone.load` opens it)."""
    layout = Layout.of(deploy)
    return layout.version(layout.live())
