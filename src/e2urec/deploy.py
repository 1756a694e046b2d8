"""A deployment: live data, model versions and a ledger (`init`), against which deletion
requests are submitted (`request`), carried out in one unlearning run, verified and purged
(`apply`, in e2urec.rollout), and shown (`status`).

Modules that load torch are imported inside `init` only (and the unlearning run), so that
`request` and `status` start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from e2urec.config import from_dict
from e2urec.data.prepare import load_splits
from e2urec.layout import Layout, tree_hash, write_atomic
from e2urec.ledger import Ledger, request_views, versions
from e2urec.purge import read_split, shown
from e2urec.requests import DeletionRequest, select, target_title, unknown
from e2urec.rollout import Busy, apply, locked

__all__ = ["Busy", "Refused", "apply", "catalogue", "init", "live_model", "request", "status"]

# Files a model folder made by `e2urec forget` carries: they list forgotten ids in clear.
LEAKY = ("forget_report.json",)


class Refused(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # what the ledger keeps: the message names ids


# ---- init ---------------------------------------------------------------------------------


def init(data, model, out, method: str = "e2urec", options=None) -> dict:
    """Create the deployment folder `out` from a prepared data folder and a trained model;
    returns `status`. `options` holds the method's options and, under "verify", the
    verification bounds (`e2urec.verification.Bounds`); `apply` uses them unless told otherwise."""
    data, model, out = Path(data), Path(model), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty; give a new folder for the deployment")
    splits = load_splits(data)
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: no such model folder")
    leaky = [name for name in LEAKY if (model / name).exists()]
    if leaky:
        raise ValueError(
            f"{model} was made by `e2urec forget` ({leaky[0]} lists forgotten ids in clear); "
            "start from the original model and submit those deletions as requests"
        )
    settings = _settings(method, dict(options or {}))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _build(Layout(tmp), data, model, settings, splits["train"])
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return status(out)


def _settings(method: str, options: dict) -> dict:
    """Method, its options and the verification bounds, each checked now rather than at apply."""
    from e2urec.methods import get_method
    from e2urec.verification import Bounds

    bounds = from_dict(Bounds, options.pop("verify", None), "verify")
    get_method(method, options)
    return {"method": method, "options": options, "verify": asdict(bounds)}


def _build(layout: Layout, data: Path, model: Path, settings: dict, train: list) -> None:
    shutil.copytree(data, layout.data)
    v0 = layout.version("v0")
    _copy_model(model, v0)
    layout.secret_file.write_bytes(secrets.token_bytes(32))
    layout.secret_file.chmod(0o600)
    report = _train_report(model)
    config = {
        **settings,
        "base": _locate_base(model, report.get("base")),
        "train_config": report.get("config"),
    }
    write_atomic(layout.config_file, json.dumps(config, indent=2) + "\n")
    write_atomic(layout.catalogue, json.dumps(catalogue(layout.data), indent=1) + "\n")
    event = {
        "event": "created",
        "version": "v0",
        "model_after": tree_hash(v0),
        "users": len({s.user for s in train}),
        "samples": len(train),
        "details": {"method": settings["method"], "verify": settings["verify"]},
    }
    with Ledger.create(layout.ledger) as ledger:
        ledger.append([event])
    layout.set_live("v0")


def _train_report(model: Path) -> dict:
    path = model / "train_report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _copy_model(src: Path, dst: Path) -> None:
    """Copy a model folder; what it builds on (an adapter's base, an ensemble's shards) outside
    the folder is then named by absolute path, as the relative one no longer leads there."""
    from e2urec.model import backbone

    shutil.copytree(src, dst)
    meta, was = backbone.read_meta(dst), backbone.read_meta(dst)

    def outside(name: str) -> str:
        found = Path(backbone.resolve(src, name))
        inside = not found.exists() or found.resolve().is_relative_to(src.resolve())
        return name if inside else str(found.resolve())

    if meta.get("kind") == "lora":
        meta["base"] = outside(meta["base"])
    if meta.get("kind") == "ensemble":
        meta["shards"] = [outside(s) for s in meta["shards"]]
    if meta != was:
        (dst / backbone.META).write_text(json.dumps(meta, indent=2) + "\n")


def _locate_base(model: Path, base: str | None) -> str | None:
    """The backbone Retrain and SISA train from: inside the deployment when it was inside the
    model folder (the tiny model's case), else an absolute path or a hub name."""
    from e2urec.model import backbone

    if base is None:
        return None
    found = Path(backbone.resolve(model, base))
    if not found.exists():
        return base
    found = found.resolve()
    if found.is_relative_to(model.resolve()):
        return str(Path("models/v0") / found.relative_to(model.resolve()))
    return str(found)


def catalogue(data: Path) -> dict:
    """{"kind": "movie" | "book", "items": {item: title}} from the prompts' targets."""
    items: dict[str, str] = {}
    kind = "movie"
    for path in sorted(data.glob("*.jsonl")):
        for s in read_split(path):
            title = target_title(s)
            if title is not None:
                items.setdefault(s.item, title)
            if "the following books" in s.input:
                kind = "book"
    return {"kind": kind, "items": items}


# ---- request ------------------------------------------------------------------------------


def request(deploy, users: Iterable = (), interactions: Iterable = ()) -> str:
    """Record a deletion request for `users` and/or (user, item) `interactions`; its id.

    Refusals (an empty request, ids not in the live training data, already forgotten or already
    pending) raise `Refused` (a ValueError) naming the ids and leave only a "refused" row."""
    layout = Layout.of(deploy)
    users = tuple(dict.fromkeys(str(u).strip() for u in users if str(u).strip()))
    pairs = tuple(dict.fromkeys((str(u).strip(), str(i).strip()) for u, i in interactions))
    rid = f"r-{uuid.uuid4().hex[:12]}"
    # Requests queue for a moment (not behind `apply`): two at once cannot both pass the checks.
    with locked(layout.request_lock, wait=True), Ledger(layout.ledger) as ledger:
        try:
            if not users and not pairs:
                raise Refused("empty", "a deletion request needs users or (user, item) pairs")
            req = DeletionRequest(users, pairs)
            train = read_split(layout.data / "train.jsonl")
            _refuse(layout, ledger, req, train)
            chosen = select(train, req)
        except Refused as err:
            counts = {"users": len(users), "samples": 0}
            details = {"reason": err.reason, "interactions": len(pairs)}
            ledger.append([{"event": "refused", "request": rid, **counts, "details": details}])
            raise
        keys = {
            "users": [layout.keyed(u) for u in users],
            "interactions": [layout.keyed(u, i) for u, i in pairs],
        }
        body = {
            "users": list(users),
            "interactions": [list(p) for p in pairs],
            "shown": shown(train, pairs),
        }
        event = {
            "event": "received",
            "request": rid,
            "users": len(chosen.users),
            "samples": len(chosen.forget),
            "details": {"keys": keys, "interactions": len(pairs), "history": chosen.history},
        }
        ledger.append([event], add_pending=(rid, body))
    return rid


def _refuse(layout: Layout, ledger: Ledger, req: DeletionRequest, train: list) -> None:
    done_users, done_pairs = _forgotten_keys(ledger)
    pending = ledger.pending().values()
    wait_users = {u for b in pending for u in b["users"]}
    wait_pairs = {tuple(p) for b in pending for p in b["interactions"]}
    found: dict[str, list[str]] = {"already forgotten": [], "pending": [], "unknown": []}
    for u in req.users:
        if layout.keyed(u) in done_users:
            found["already forgotten"].append(u)
        elif u in wait_users:
            found["pending"].append(u)
    for u, i in req.interactions:
        if layout.keyed(u) in done_users or layout.keyed(u, i) in done_pairs:
            found["already forgotten"].append(f"{u}/{i}")
        elif u in wait_users or (u, i) in wait_pairs:
            found["pending"].append(f"{u}/{i}")
    named = set(found["already forgotten"] + found["pending"])
    bad_users, bad_pairs = unknown(req, train)
    found["unknown"] = [u for u in bad_users if u not in named]
    found["unknown"] += [f"{u}/{i}" for u, i in bad_pairs if f"{u}/{i}" not in named]
    what = {
        "unknown": "not in the live training data",
        "already forgotten": "already forgotten by an earlier request",
        "pending": "already in a request waiting for `apply`",
    }
    problems = [f"{what[k]}: {', '.join(v)}" for k, v in found.items() if v]
    if problems:
        reason = ", ".join(k for k, v in found.items() if v)
        raise Refused(reason, "; ".join(problems) + ". Nothing was changed.")


def _forgotten_keys(ledger: Ledger) -> tuple[set[str], set[str]]:
    """HMACs of the users and pairs of purged requests."""
    rows = ledger.records()
    purged = {r["request"] for r in rows if r["event"] == "purged"}
    users, pairs = set(), set()
    for r in rows:
        if r["event"] == "received" and r["request"] in purged:
            users.update(r["details"]["keys"]["users"])
            pairs.update(r["details"]["keys"]["interactions"])
    return users, pairs


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
    checks = {r["version"]: r["details"].get("verification") for r in rows if r["event"] == "verified"}  # fmt: skip
    models = [
        {**info, "id": v, "verification": checks.get(v), "live": v == live}
        for v, info in versions(rows).items()
    ]
    chosen = [requests[request_id]] if request_id else list(requests.values())
    return {"live": live, "models": models, "requests": chosen, "ledger": head}


def live_model(deploy) -> Path:
    """The folder of the version being served (`backbone.load` opens it)."""
    layout = Layout.of(deploy)
    return layout.version(layout.live())
