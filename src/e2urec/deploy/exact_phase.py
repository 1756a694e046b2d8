"""Two-phase deletions (`init --exact apa`): after the approximate phase (`apply_loop`: E2URec on
the live model, the data purged, the ids dropped) each request is carried out exactly. The
shards of the deployment's APA model that held its rows are retrained from the backbone on the
data left after every deletion so far, the others copied, and the new APA version goes live in
place of the approximate model.

The exact phase never needs the ids: the approximate phase records, in each "purged" row, the
shard numbers of the request's users (from the last exact version's `homes`), and the users
come back as the HMACs the ledger keeps anyway. For that the deployment's APA models name users
by their HMAC (`homes`, the pool's rows): no model file holds an id in clear, and the HMAC of a
user asked for is the one in the request's "received" row.

Each exact version derives from the exact version before it (the APA model of `init` or the
last exact step), never from an approximate one: `integrity.exact_problems` checks that. Its
steps, like the approximate phase's, can each be crashed after (`E2UREC_CRASH_AT`): until the
"retrained" rows are written the new version is a staging folder the next apply removes; from
then on it rolls forward (name the folder as its version, switch LIVE, write "exact" rows).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace

from e2urec.config import from_dict
from e2urec.data.sample import Sample
from e2urec.deploy import integrity
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Keyer, Layout, tree_hash
from e2urec.deploy.ledger import Ledger, Row, states, versions
from e2urec.deploy.purge import read_split

METHODS = ("apa",)  # exact methods a deployment can carry its requests out with
STEPS = (
    "exact-selected",
    "exact-trained",
    "exact-checked",
    "exact-recorded",
    "exact-promoted",
    "exact-switched",
)


class Failed(RuntimeError):
    """The exact phase failed; its "failed" rows are written and the approximate model stays."""


def enabled(layout: Layout) -> bool:
    return layout.config().get("exact") is not None


def keyed(keyer: Keyer, samples: list[Sample]) -> list[Sample]:
    """The samples with their users named by HMAC, as the deployment's APA models name them."""
    return [replace(s, user=keyer(s.user)) for s in samples]


def train_first(layout: Layout, base: str, train_config: dict | None, options: dict) -> dict:
    """The APA model `init` serves (models/v1), trained from the backbone on the live data."""
    from e2urec.data.manifest import read_answers
    from e2urec.methods.apa import train_apa
    from e2urec.model.train import TrainConfig

    keyer = layout.keyer()
    train, valid = (keyed(keyer, read_split(layout.data / f"{n}.jsonl")) for n in ("train", "valid"))  # fmt: skip
    config = from_dict(TrainConfig, train_config, "train")
    answers = read_answers(layout.data)
    return train_apa(base, train, valid, layout.version("v1"), config, options, answers=answers)


def last_exact(rows: list[Row]) -> str:
    """The newest exact version: the APA model of `init`, or the last exact step's."""
    found = None
    for r in rows:
        if r.event == Event.RETRAINED or (r.event == Event.CREATED and r.details.get("exact")):
            found = r.version
    return found


def shard_details(layout: Layout, rows: list[Row], bodies: dict[str, dict]) -> dict[str, dict]:
    """{request: {"shards": [...]}}: the shards of the last exact version that hold the rows of
    each request (its users, and the users of its deleted ratings); read while the ids are
    still there, so that the exact phase needs none."""
    folder = integrity.version_folder(layout, rows, last_exact(rows))
    homes = json.loads((folder / "e2urec.json").read_text())["homes"]
    keyer = layout.keyer()
    found = {}
    for rid, body in bodies.items():
        users = set(body["users"]) | {u for u, _ in body["interactions"]}
        found[rid] = {"shards": sorted({homes[k] for u in users if (k := keyer(u)) in homes})}
    return found


def roll_forward(layout: Layout, ledger: Ledger, checkpoint: Callable[[str], None]) -> list[str]:
    """Finish exact steps a crash left after their "retrained" rows."""
    rolling: dict[str, list[str]] = {}
    for rid, st in states(ledger.records()).items():
        if st.event == Event.RETRAINED:
            rolling.setdefault(st.rows[Event.RETRAINED].version, []).append(rid)
    for version, ids in rolling.items():
        _finish(layout, ledger, ids, version, checkpoint)
    return [r for ids in rolling.values() for r in ids]


def waiting(rows: list[Row]) -> list[str]:
    """Requests carried out approximately whose exact phase has not started."""
    found = []
    for rid, st in states(rows).items():
        purged = st.rows.get(Event.PURGED)
        if purged and "shards" in purged.details and Event.RETRAINED not in st.rows:
            found.append(rid)
    return found


def run(layout: Layout, ledger: Ledger, checkpoint: Callable[[str], None], bounds) -> list[str]:
    """The exact phase of every request waiting for one, in one step; the requests."""
    ids = waiting(ledger.records())
    if not ids:
        return []
    try:
        _build(layout, ledger, ids, checkpoint, bounds)
    except Exception as err:
        _record_failure(ledger, ids, type(err).__name__)
        raise Failed(f"the exact phase failed ({type(err).__name__}: {err}); "
                     "the approximate model stays live and the next apply tries again") from err  # fmt: skip
    return ids


def _build(layout: Layout, ledger: Ledger, ids: list[str], checkpoint, bounds) -> None:
    from e2urec.deploy.verification import verify_exact
    from e2urec.methods.apa import forget

    rows = ledger.records()
    st, recorded = states(rows), versions(rows)
    source, before = last_exact(rows), layout.live()
    shards = sorted({k for r in ids for k in st[r].rows[Event.PURGED].details["shards"]})
    gone = {u for r in ids for u in st[r].rows[Event.RECEIVED].details["keys"]["users"]}
    keyer, data = layout.keyer(), layout.data
    train, valid = (keyed(keyer, read_split(data / f"{n}.jsonl")) for n in ("train", "valid"))
    held_name = "holdout.jsonl" if (data / "holdout.jsonl").exists() else "test.jsonl"
    staging = layout.reserve(layout.models / f".staging-{uuid.uuid4().hex[:8]}")
    checkpoint("exact-selected")
    info = forget(layout.version(source), gone, train, valid, staging, shards=shards)
    checkpoint("exact-trained")
    numbers = verify_exact(
        str(layout.version(before)), str(staging), gone, read_split(data / held_name), held_name, bounds
    )  # fmt: skip
    checkpoint("exact-checked")
    if not numbers["passed"]:
        shutil.rmtree(staging)
        _record_failure(ledger, ids, "VerificationFailed", numbers)
        return
    version = layout.next_version(recorded)
    details = {
        "phase": "exact",
        "from": source,
        "from_hash": recorded[source]["hash"],
        "shards": info["retrained_shards"],
        "verification": numbers,
        "chain": integrity.chain(layout, staging),
        "staging": staging.name,
        "run": {"requests": len(ids), "train": len(train), "seconds": round(info["seconds"], 2)},
    }
    digest = tree_hash(staging)
    ledger.append([
        {
            "event": Event.RETRAINED,
            "request": r,
            "method": layout.config()["exact"],
            "users": st[r].rows[Event.RECEIVED].users,
            "samples": st[r].rows[Event.RECEIVED].samples,
            "model_before": recorded[before]["hash"],
            "model_after": digest,
            "version": version,
            "details": details,
        }
        for r in ids
    ])  # fmt: skip
    checkpoint("exact-recorded")
    _finish(layout, ledger, ids, version, checkpoint)


def _finish(layout: Layout, ledger: Ledger, ids: list[str], version: str, checkpoint) -> None:
    """Name the staging folder as its version, switch LIVE, write the "exact" rows."""
    st = states(ledger.records())
    row = st[ids[0]].rows[Event.RETRAINED]
    if not layout.version(version).exists():
        os.replace(layout.models / row.details["staging"], layout.version(version))
    checkpoint("exact-promoted")
    layout.set_live(version)
    checkpoint("exact-switched")
    ledger.append([st[r].rows[Event.RETRAINED].followed_by(Event.EXACT) for r in ids])


def _record_failure(ledger: Ledger, ids: list[str], error: str, numbers=None) -> None:
    """A "failed" row (phase exact) for each request whose exact step did not start rolling."""
    st = states(ledger.records())
    todo = [r for r in ids if st[r].event not in (Event.RETRAINED, Event.EXACT)]
    if todo:
        ledger.append([
            {
                "event": Event.FAILED,
                "request": r,
                "users": st[r].rows[Event.RECEIVED].users,
                "samples": st[r].rows[Event.RECEIVED].samples,
                "details": {"phase": "exact", "error": error, "verification": numbers},
            }
            for r in todo
        ])  # fmt: skip
