"""What `ledger verify` checks and `apply` insists on before it builds on anything.

Beyond the ledger's own chain: every recorded model version still hashes to its record, and so
does what it builds on (its base chain); LIVE names the last applied version (a rollback would
serve, and the next apply build on, a model that still knows forgotten data); the HMAC key is the
one the deployment was made with; each data file's content is the one recorded after the last
apply; and no row of a forgotten user or interaction is back in the data. The stored HMACs do
that last check: they are the only trace of what was forgotten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2urec.data.deletion import Eraser
from e2urec.data.sample import FIELDS, Sample
from e2urec.deploy.events import BUILT, Event
from e2urec.deploy.folder import Keyer, KeyMissing, Layout, tree_hash
from e2urec.deploy.ledger import (
    Ledger,
    Row,
    State,
    order_problems,
    rolling,
    signature,
    states,
    versions,
)
from e2urec.deploy.purge import read_split

CAP = 50  # problems of one kind listed before "and N more"


class Tampered(ValueError):
    """The deployment fails a check `apply` will not build on; nothing was changed."""


# ---- data -------------------------------------------------------------------------------


def digest(samples: list[Sample]) -> str:
    """The content of a split, whatever the bytes' formatting: rows, in order."""
    total = hashlib.sha256()
    for s in samples:
        # No history: the row as files written before samples recorded it hash (their ledgers).
        row = {f: getattr(s, f) for f in FIELDS if f != "history" or s.history}
        total.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
    return total.hexdigest()


def read_splits(folder: Path) -> dict[str, list[Sample]]:
    return {p.name: read_split(p) for p in sorted(folder.glob("*.jsonl"))}


def digests(splits: dict[str, list[Sample]]) -> dict[str, str]:
    return {name: digest(samples) for name, samples in splits.items()}


def forgotten(keyer: Keyer, rows: list[Row]) -> Eraser:
    """The deletion rule over everything purged requests removed, held as the HMACs their
    "received" rows keep (users, (user, item) pairs, and how a deleted rating shows in the paper
    prompts of samples that record no history: (user, 'Title (N stars)'))."""
    done = {rid for rid, st in states(rows).items() if Event.PURGED in st.rows}
    users, pairs, shown = set(), set(), set()
    for r in rows:
        if r.event == Event.RECEIVED and r.request in done:
            keys = r.details["keys"]
            users.update(keys["users"])
            pairs.update(keys["interactions"])
            shown.update(keys.get("shown", []))
    return Eraser(frozenset(users), frozenset(pairs), frozenset(shown), key=keyer)


def recorded_data(rows: list[Row]) -> tuple[dict[str, str] | None, dict[str, str]]:
    """The data digests recorded after the last apply (or at init), and those a verified run
    still purging will leave (a crash mid-purge leaves each file one or the other)."""
    recorded = None
    for r in rows:
        if "data" in r.details:
            recorded = r.details["data"]
    after: dict[str, str] = {}
    for st in states(rows).values():
        if rolling(st):
            after.update(st.rows[Event.VERIFIED].details.get("data_after") or {})
    return recorded, after


def data_state(layout: Layout, rows: list[Row], erased: Eraser | None, splits: dict):
    """(problems, restorable): files of `splits` (as read) changed in another way than
    forgotten rows coming back, and {file: its samples without them} for those where only
    forgotten rows came back."""
    recorded, after = recorded_data(rows)
    problems, restorable = [], {}
    if recorded is not None:
        for name in sorted(set(recorded) - set(splits)):
            problems.append(f"data/{name}: missing (the ledger recorded it after the last apply)")
        for name in sorted(set(splits) - set(recorded)):
            problems.append(f"data/{name}: not a file the ledger recorded")
    for name, samples in splits.items():
        known = {recorded.get(name), after.get(name)} if recorded is not None else None
        if known is not None and (name not in recorded or digest(samples) in known):
            continue
        kept = samples if erased is None else [s for s in samples if not erased.erases(s)]
        if len(kept) < len(samples) and (known is None or digest(kept) in known):
            restorable[name] = kept
        elif known is not None:
            problems.append(
                f"data/{name}: its content differs from the one recorded after the last apply "
                "(rows lost, added or edited); restore the file as it was"
            )
    return problems, restorable


# ---- models, LIVE, key ------------------------------------------------------------------


def chain(layout: Layout, folder: Path) -> list[dict]:
    """What a model folder builds on (an adapter's base, an ensemble's shards), recursively:
    versions of the deployment by name, other folders by path and content hash."""
    from e2urec.model import backbone

    meta = backbone.read_meta(folder)
    names = [meta["base"]] if meta.get("kind") in ("lora", "apa") else []
    names += [meta["peft_base"]] if meta.get("peft_base") else []  # its base's own base
    names += meta.get("shards", []) if meta.get("kind") in ("ensemble", "apa") else []
    found = []
    for name in names:
        path = Path(backbone.resolve(folder, name))
        if meta.get("kind") == "apa" and path.resolve().is_relative_to(Path(folder).resolve()):
            continue  # an APA model's own shards: part of its content hash
        if not path.exists():
            found.append({"name": name})  # a hub name: nothing on disk to vouch for
        elif path.resolve().is_relative_to(layout.models.resolve()):
            found.append(
                {"version": path.resolve().relative_to(layout.models.resolve()).as_posix()}
            )
        else:
            found += [{"path": str(path.resolve()), "hash": tree_hash(path)}, *chain(layout, path)]
    return found


def version_order(rows: list[Row]) -> list[str]:
    return list(versions(rows))


def live_problems(layout: Layout, rows: list[Row]) -> list[str]:
    """LIVE must name the last applied version (or, while a verified run rolls forward, the one
    before it); each run must have started from the version live before it."""
    order, recorded, problems = version_order(rows), versions(rows), []
    befores: dict[str, set] = {}
    for r in rows:
        if r.event in BUILT:
            befores.setdefault(r.version, set()).add(r.model_before)
    for prev, version in zip(order, order[1:]):
        if befores[version] != {recorded[prev]["hash"]}:
            problems.append(
                f"models/{version} was made from a model that is not {prev}, the version before it"
            )
    switching = any(_switching(st) and st.version == order[-1] for st in states(rows).values())
    allowed = set(order[-2:]) if switching else {order[-1]}
    live = layout.live()
    if live not in allowed:
        problems.append(
            f"LIVE names {live!r}, but the last applied version is {order[-1]!r}: "
            "serving or building on an earlier version would undo the deletions since"
        )
    return problems


def _switching(st: State) -> bool:
    """Verified (or retrained) into the newest version, which LIVE may not name yet."""
    done = st.rows
    approximate = Event.VERIFIED in done and Event.APPLIED not in done and Event.PURGED not in done
    return approximate or (Event.RETRAINED in done and Event.EXACT not in done)


def model_problems(layout: Layout, rows: list[Row], only: set[str] | None = None) -> list[str]:
    """Recorded versions (or `only` these) that are missing, changed, or whose base chain is not
    the one the ledger recorded."""
    problems, chains = [], _recorded_chains(rows)
    for version, info in versions(rows).items():
        if only is not None and version not in only:
            continue
        folder = version_folder(layout, rows, version)
        if not folder.is_dir():
            problems.append(f"models/{version}: recorded in the ledger but missing")
            continue
        if tree_hash(folder) != info["hash"]:
            problems.append(f"models/{version}: its files do not match the hash in the ledger")
        if version in chains and chain(layout, folder) != chains[version]:
            problems.append(
                f"models/{version}: what it builds on differs from what the ledger recorded "
                "(a base folder changed or moved)"
            )
    return problems


def version_folder(layout: Layout, rows: list[Row], version: str) -> Path:
    """A version's folder; until a verified run is rolled forward, its staging folder."""
    folder = layout.version(version)
    if not folder.exists():
        for r in rows:
            if r.event in (Event.VERIFIED, Event.RETRAINED) and r.version == version:
                return layout.models / r.details.get("staging", version)
    return folder


def _recorded_chains(rows: list[Row]) -> dict[str, list]:
    return {
        r.version: r.details["chain"] for r in rows if r.event in BUILT and "chain" in r.details
    }


def exact_problems(layout: Layout, rows: list[Row]) -> list[str]:
    """A two-phase deployment: each exact version must come from the exact version before it (the
    APA model of `init`, or the last exact step), never from an approximate one, whose unlearning
    only dampened what its base had seen; it must be an APA model that builds on no version but
    the backbone; and its step must have retrained every shard its requests recorded."""
    created = [r for r in rows if r.event == Event.CREATED and r.details.get("exact")]
    if not created:
        return []
    backbone_at = _inside(layout.config().get("base"))
    lineage, problems, recorded = [created[0].version], [], states(rows)
    steps: dict[str, list[Row]] = {}
    for r in rows:
        if r.event == Event.RETRAINED:
            steps.setdefault(r.version, []).append(r)
    for version, made in steps.items():
        details = made[0].details
        if details.get("from") != lineage[-1]:
            problems.append(
                f"models/{version}: the exact phase built it from {details.get('from')!r}, not "
                f"from {lineage[-1]!r}, the last exact version: what it builds on saw deleted rows"
            )
        names = [c["version"] for c in details.get("chain", []) if "version" in c]
        for name in names:
            if name != backbone_at:
                problems.append(
                    f"models/{version}: an exact version builds on models/{name}, not only on "
                    "the backbone"
                )
        folder = version_folder(layout, rows, version) / "e2urec.json"
        kind = json.loads(folder.read_text()).get("kind") if folder.is_file() else None
        if kind != "apa":
            problems.append(f"models/{version}: an exact version is not an APA model ({kind!r})")
        for r in made:
            purged = recorded[r.request].rows.get(Event.PURGED)
            asked = set(purged.details.get("shards") or []) if purged else set()
            missing = sorted(asked - set(details.get("shards", [])))
            if missing:
                problems.append(
                    f"request {r.request}: its exact step ({version}) did not retrain "
                    f"shard(s) {missing}, which held its rows"
                )
        lineage.append(version)
    return problems


def _inside(base: str | None) -> str | None:
    """The backbone's place as `chain` names it when it lies inside a version (models/v0/...)."""
    if base and Path(base).parts[:1] == ("models",):
        return Path(*Path(base).parts[1:]).as_posix()
    return None


def key_problems(layout: Layout, rows: list[Row]) -> tuple[list[str], Keyer | None]:
    recorded = next((r.details.get("key") for r in rows if r.event == Event.CREATED), None)
    if layout.key_file.resolve().is_relative_to(layout.root.resolve()):
        inside = f"the HMAC key {layout.key_file} is inside the deployment folder"
        return [inside + ": a copy of the folder would carry it; keep it elsewhere"], None
    try:
        keyer = layout.keyer()
    except (KeyMissing, ValueError) as err:
        return [str(err)], None
    if recorded is not None and keyer.fingerprint() != recorded:
        message = f"the HMAC key {layout.key_file} is not the one the deployment was created with"
        return [message + " (forgotten ids would no longer be recognised)"], None
    return [], keyer


def pending_problems(keyer: Keyer, rows: list[Row], pending: dict[str, dict]) -> list[str]:
    """The ids a pending request will delete must be those whose HMACs its chained "received"
    row keeps: the pending table itself is outside the chain, so an edit there is caught here."""
    keys = {r.request: r.details.get("keys") for r in rows if r.event == Event.RECEIVED}
    problems = []
    for rid, body in pending.items():
        if rid in keys and not _matches(keyer, body, keys[rid] or {}):
            problems.append(
                f"request {rid}: its pending ids do not match the HMACs of its received row "
                "(the pending table was edited); restore the ledger from a backup"
            )
    return problems


def _matches(keyer: Keyer, body, keys: dict) -> bool:
    try:
        found = {
            "users": [keyer(u) for u in body["users"]],
            "interactions": [keyer(u, i) for u, i in body["interactions"]],
            "shown": [keyer(u, text) for u, text in body.get("shown", [])],
        }
    except (TypeError, KeyError, ValueError, AttributeError):  # not a body `request` writes
        return False
    return all(found[k] == keys.get(k, []) for k in found)


def backbone_record(layout: Layout, base: str | None) -> dict | None:
    """What `init` records of the backbone Retrain and the exact phase train from: its name, and
    the content hash of its folder when it lies outside the deployment (inside, v0's covers it)."""
    if base is None:
        return None
    path = Path(base) if Path(base).is_absolute() else layout.root / base
    if not path.is_dir() or path.resolve().is_relative_to(layout.root.resolve()):
        return {"name": base}
    return {"name": base, "hash": tree_hash(path)}


def backbone_problems(layout: Layout, rows: list[Row]) -> list[str]:
    recorded = next((r.details.get("backbone") for r in rows if r.event == Event.CREATED), None)
    if recorded is None:
        return []  # a deployment made before the backbone was recorded
    base = layout.config().get("base")
    if base != recorded["name"]:
        return [f"config.json names the backbone {base!r}, not {recorded['name']!r} as at init"]
    if "hash" in recorded and backbone_record(layout, base) != recorded:
        return [
            f"the backbone {base} is not the one hashed at init: a version trained from it "
            "(Retrain, the exact phase) would build on other weights"
        ]
    return []


def head_problems(rows: list[Row], kept: str) -> list[str]:
    """The head an operator kept elsewhere must be a row of this ledger (later rows may follow):
    an older copy of the ledger restored, with LIVE and the data, passes every other check."""
    kept = kept.strip().lower()
    if len(kept) < 16 or any(c not in "0123456789abcdef" for c in kept):
        raise ValueError(f"--expect-head {kept!r}: give the head's hash (16 or more hex digits)")
    if not any(r.hash.startswith(kept) for r in rows):
        return [
            f"the ledger has no row with the head {kept[:16]} that was kept: it is not the "
            "ledger that recorded it (an older copy restored, or the chain rewritten)"
        ]
    return []


# ---- the checks ---------------------------------------------------------------------------


def _cap(problems: list[str]) -> list[str]:
    return problems[:CAP] + ([f"and {len(problems) - CAP} more"] if len(problems) > CAP else [])


SETTLE = 5  # checks tried while other processes keep writing the ledger


def settled(layout: Layout, work: Callable[[], tuple[list[str], Any]]) -> tuple[list[str], Any]:
    """`work()` (its problems first), done again when the ledger changed while it ran: LIVE and
    the data are read after the ledger's rows, and a check that straddles another process's
    writes (an apply's rows, LIVE switched between two of them, a request's row) can disagree
    with itself. Problems are believed from a check that saw no write."""
    for _ in range(SETTLE):
        seen = signature(layout.ledger)
        found = work()
        if not found[0] or signature(layout.ledger) == seen:
            break
    return found


def check(layout: Layout, models: str = "all") -> tuple[list[str], dict]:
    """(problems, found: rows, restorable, splits). `models`: "all" re-hashes every recorded
    version and the backbone; "live" only the live version, what it builds on and the backbone
    (what `apply` builds on); "none" no model file (what `request` relies on: ledger, LIVE, key,
    data)."""
    return settled(layout, lambda: _check(layout, models))


def _check(layout: Layout, models: str) -> tuple[list[str], dict]:
    with Ledger(layout.ledger) as ledger:
        rows, chained, pending = ledger.checked()
    problems = [*chained, *order_problems(rows, set(pending))]
    recorded = versions(rows)
    live = layout.live()
    if live not in recorded:
        problems.append(f"the live model {live!r} is not a version the ledger records")
    else:
        problems += live_problems(layout, rows)
    if models != "none":
        only = None if models == "all" else live_chain(layout, live, recorded)
        problems += model_problems(layout, rows, only) + backbone_problems(layout, rows)
    problems += exact_problems(layout, rows)
    found, keyer = key_problems(layout, rows)
    problems += found
    if keyer is not None:
        problems += pending_problems(keyer, rows, pending)
    erased = forgotten(keyer, rows) if keyer is not None else None
    splits = read_splits(layout.data)
    found, restorable = data_state(layout, rows, erased, splits)
    return problems + found, {"rows": rows, "restorable": restorable, "splits": splits}


def servable(layout: Layout, rehash: bool = False) -> str:
    """The version to serve: the one LIVE names, if the ledger's chain holds and it is the last
    applied version (the rule `ledger verify` applies); with `rehash` (before loading it), its
    files and what it builds on must also hash to their records. Tampered otherwise."""
    problems, live = settled(layout, lambda: _serving(layout, rehash))
    if problems:
        raise Tampered(f"{layout.root}: will not serve: {'; '.join(_cap(problems))}")
    return live


def _serving(layout: Layout, rehash: bool) -> tuple[list[str], str]:
    with Ledger(layout.ledger) as ledger:
        rows, chained, _ = ledger.checked()
    live, recorded = layout.live(), versions(rows)
    problems = list(chained)
    if live not in recorded:
        problems.append(f"LIVE names {live!r}, not a version the ledger records")
    else:
        problems += live_problems(layout, rows)
        if rehash and not problems:
            problems += model_problems(layout, rows, live_chain(layout, live, recorded))
    return problems, live


def live_chain(layout: Layout, live: str, recorded: dict) -> set[str]:
    names, todo = set(), [live]
    while todo:
        version = todo.pop()
        if version in names or version not in recorded or not layout.version(version).is_dir():
            continue
        names.add(version)
        todo += [c["version"] for c in chain(layout, layout.version(version)) if "version" in c]
    return names


def verify(deploy: str | Path, expect_head: str | None = None) -> dict:
    """Check the chain and each request's events, re-hash every recorded model version and its
    base chain and the backbone, LIVE, the key and the data against the ledger; with
    `expect_head`, that the ledger holds the head kept elsewhere."""
    layout = Layout.of(deploy)
    problems, found = check(layout)
    if expect_head is not None:
        problems += head_problems(found["rows"], expect_head)
    for name in found["restorable"]:
        problems.append(
            f"data/{name}: holds forgotten rows again (restored from a backup?); "
            "the next `apply` removes them"
        )
    return {"ok": not problems, "rows": len(found["rows"]), "problems": _cap(problems)}


def preflight(layout: Layout) -> dict[str, list[Sample]]:
    """Refuse (Tampered) to build on a deployment that fails the checks; return the files in
    which only forgotten rows came back, with their samples without them."""
    problems, found = check(layout, models="live")
    if problems:
        listed = "; ".join(_cap(problems))
        raise Tampered(f"{layout.root}: refusing to apply, nothing was changed: {listed}")
    return found["restorable"]


def intake_check(layout: Layout) -> dict[str, list[Sample]]:
    """What a request relies on (ledger, LIVE, key, data; no model file re-hashed): a failure is
    the deployment's, not the data subject's, and no refusal is recorded (Tampered). Returns
    the data's splits as read."""
    problems, found = check(layout, models="none")
    if problems:
        listed = "; ".join(_cap(problems))
        raise Tampered(
            f"{layout.root}: the deployment needs its operator, the request was not recorded: "
            f"{listed}"
        )
    return found["splits"]
