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
from dataclasses import dataclass
from pathlib import Path

from e2urec.data.deletion import shown
from e2urec.data.sample import FIELDS, Sample
from e2urec.deploy.folder import Keyer, KeyMissing, Layout, tree_hash
from e2urec.deploy.ledger import BUILT, Ledger, order_problems, states, versions
from e2urec.deploy.purge import read_split

CAP = 50  # problems of one kind listed before "and N more"


class Tampered(ValueError):
    """The deployment fails a check `apply` will not build on; nothing was changed."""


# ---- data -------------------------------------------------------------------------------


def digest(samples: list[Sample]) -> str:
    """The content of a split, whatever the bytes' formatting: rows, in order."""
    total = hashlib.sha256()
    for s in samples:
        row = {f: getattr(s, f) for f in FIELDS}
        total.update((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
    return total.hexdigest()


def read_splits(folder: Path) -> dict[str, list[Sample]]:
    return {p.name: read_split(p) for p in sorted(folder.glob("*.jsonl"))}


def digests(splits: dict[str, list[Sample]]) -> dict[str, str]:
    return {name: digest(samples) for name, samples in splits.items()}


@dataclass(frozen=True)
class Forgotten:
    """The HMACs of everything purged requests removed: users, (user, item) pairs, and how a
    deleted rating shows in later prompts ((user, 'Title (N stars)'))."""

    keyer: Keyer
    users: frozenset[str]
    pairs: frozenset[str]
    shown: frozenset[str]

    @classmethod
    def of(cls, keyer: Keyer, rows: list[dict]) -> Forgotten:
        done = {rid for rid, st in states(rows).items() if "purged" in st}
        users, pairs, shown = set(), set(), set()
        for r in rows:
            if r["event"] == "received" and r["request"] in done:
                keys = r["details"]["keys"]
                users.update(keys["users"])
                pairs.update(keys["interactions"])
                shown.update(keys.get("shown", []))
        return cls(keyer, frozenset(users), frozenset(pairs), frozenset(shown))

    def erases(self, s: Sample) -> bool:
        key = self.keyer
        if key(s.user) in self.users or key(s.user, s.item) in self.pairs:
            return True
        items, texts = shown(s)
        if any(key(s.user, i) in self.pairs for i in items):
            return True
        return bool(self.shown) and any(key(s.user, r) in self.shown for r in texts)


def recorded_data(rows: list[dict]) -> tuple[dict[str, str] | None, dict[str, str]]:
    """The data digests recorded after the last apply (or at init), and those a verified run
    still purging will leave (a crash mid-purge leaves each file one or the other)."""
    recorded = None
    for r in rows:
        if "data" in r["details"]:
            recorded = r["details"]["data"]
    after: dict[str, str] = {}
    for st in states(rows).values():
        if st["event"] in ("verified", "applied"):
            after.update(st["verified"]["details"].get("data_after") or {})
    return recorded, after


def data_state(layout: Layout, rows: list[dict], forgotten: Forgotten | None):
    """(problems, restorable): files changed in another way than forgotten rows coming back,
    and {file: its samples without them} for those where only forgotten rows came back."""
    recorded, after = recorded_data(rows)
    splits = read_splits(layout.data)
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
        kept = samples if forgotten is None else [s for s in samples if not forgotten.erases(s)]
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


def version_order(rows: list[dict]) -> list[str]:
    return list(versions(rows))


def live_problems(layout: Layout, rows: list[dict]) -> list[str]:
    """LIVE must name the last applied version (or, while a verified run rolls forward, the one
    before it); each run must have started from the version live before it."""
    order, recorded, problems = version_order(rows), versions(rows), []
    for prev, version in zip(order, order[1:]):
        befores = {r["model_before"] for r in rows if r["event"] in BUILT and r["version"] == version}  # fmt: skip
        if befores != {recorded[prev]["hash"]}:
            problems.append(
                f"models/{version} was made from a model that is not {prev}, the version before it"
            )
    rolling = any(st["event"] in ("verified", "retrained") and st.get("version") == order[-1] for st in states(rows).values())  # fmt: skip
    allowed = set(order[-2:]) if rolling else {order[-1]}
    live = layout.live()
    if live not in allowed:
        problems.append(
            f"LIVE names {live!r}, but the last applied version is {order[-1]!r}: "
            "serving or building on an earlier version would undo the deletions since"
        )
    return problems


def model_problems(layout: Layout, rows: list[dict], only: set[str] | None = None) -> list[str]:
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


def version_folder(layout: Layout, rows: list[dict], version: str) -> Path:
    """A version's folder; until a verified run is rolled forward, its staging folder."""
    folder = layout.version(version)
    if not folder.exists():
        for r in rows:
            if r["event"] in ("verified", "retrained") and r["version"] == version:
                return layout.models / r["details"].get("staging", version)
    return folder


def _recorded_chains(rows: list[dict]) -> dict[str, list]:
    return {
        r["version"]: r["details"]["chain"]
        for r in rows
        if r["event"] in BUILT and "chain" in r["details"]
    }


def exact_problems(layout: Layout, rows: list[dict]) -> list[str]:
    """A two-phase deployment: each exact version must come from the exact version before it (the
    APA model of `init`, or the last exact step), never from an approximate one, whose unlearning
    only dampened what its base had seen; it must be an APA model that builds on no version but
    the backbone; and its step must have retrained every shard its requests recorded."""
    created = [r for r in rows if r["event"] == "created" and r["details"].get("exact")]
    if not created:
        return []
    backbone_at = _inside(layout.config().get("base"))
    lineage, problems, recorded = [created[0]["version"]], [], states(rows)
    steps: dict[str, list[dict]] = {}
    for r in rows:
        if r["event"] == "retrained":
            steps.setdefault(r["version"], []).append(r)
    for version, made in steps.items():
        details = made[0]["details"]
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
            asked = set(recorded[r["request"]].get("purged", {}).get("details", {}).get("shards") or [])  # fmt: skip
            missing = sorted(asked - set(details.get("shards", [])))
            if missing:
                problems.append(
                    f"request {r['request']}: its exact step ({version}) did not retrain "
                    f"shard(s) {missing}, which held its rows"
                )
        lineage.append(version)
    return problems


def _inside(base: str | None) -> str | None:
    """The backbone's place as `chain` names it when it lies inside a version (models/v0/...)."""
    if base and Path(base).parts[:1] == ("models",):
        return Path(*Path(base).parts[1:]).as_posix()
    return None


def key_problems(layout: Layout, rows: list[dict]) -> tuple[list[str], Keyer | None]:
    recorded = next((r["details"].get("key") for r in rows if r["event"] == "created"), None)
    try:
        keyer = layout.keyer()
    except (KeyMissing, ValueError) as err:
        return [str(err)], None
    if recorded is not None and keyer.fingerprint() != recorded:
        message = f"the HMAC key {layout.key_file} is not the one the deployment was created with"
        return [message + " (forgotten ids would no longer be recognised)"], None
    return [], keyer


# ---- the checks ---------------------------------------------------------------------------


def _cap(problems: list[str]) -> list[str]:
    return problems[:CAP] + ([f"and {len(problems) - CAP} more"] if len(problems) > CAP else [])


def check(layout: Layout, all_models: bool = True) -> tuple[list[str], dict]:
    """(problems, restorable). `all_models` False: only the live version and what it builds on
    are re-hashed (what `apply` builds on)."""
    with Ledger(layout.ledger) as ledger:
        rows, problems = ledger.chain_problems()
        problems += order_problems(rows, set(ledger.pending()))
    recorded = versions(rows)
    live = layout.live()
    if live not in recorded:
        problems.append(f"the live model {live!r} is not a version the ledger records")
    else:
        problems += live_problems(layout, rows)
    only = None if all_models else live_chain(layout, live, recorded)
    problems += model_problems(layout, rows, only)
    problems += exact_problems(layout, rows)
    found, keyer = key_problems(layout, rows)
    problems += found
    forgotten = Forgotten.of(keyer, rows) if keyer is not None else None
    found, restorable = data_state(layout, rows, forgotten)
    return problems + found, {"rows": len(rows), "restorable": restorable}


def live_chain(layout: Layout, live: str, recorded: dict) -> set[str]:
    names, todo = set(), [live]
    while todo:
        version = todo.pop()
        if version in names or version not in recorded or not layout.version(version).is_dir():
            continue
        names.add(version)
        todo += [c["version"] for c in chain(layout, layout.version(version)) if "version" in c]
    return names


def verify(deploy: str | Path) -> dict:
    """Check the chain and each request's events, re-hash every recorded model version and its
    base chain, LIVE, the key and the data against the ledger."""
    layout = Layout.of(deploy)
    problems, found = check(layout)
    for name in found["restorable"]:
        problems.append(
            f"data/{name}: holds forgotten rows again (restored from a backup?); "
            "the next `apply` removes them"
        )
    return {"ok": not problems, "rows": found["rows"], "problems": _cap(problems)}


def preflight(layout: Layout) -> dict[str, list[Sample]]:
    """Refuse (Tampered) to build on a deployment that fails the checks; return the files in
    which only forgotten rows came back, with their samples without them."""
    problems, found = check(layout, all_models=False)
    if problems:
        listed = "; ".join(_cap(problems))
        raise Tampered(f"{layout.root}: refusing to apply, nothing was changed: {listed}")
    return found["restorable"]
