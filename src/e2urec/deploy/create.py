"""`init`: a deployment folder made from a prepared data folder and a trained model: the live
data, the first model version, the ledger, the settings `apply` uses and the catalogue the service
scores from.

Modules that load torch are imported inside `init` only, so that `request` and `status` start
in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

from e2urec.config import from_dict
from e2urec.data.canaries import real
from e2urec.data.deletion import target_title
from e2urec.data.manifest import read_answers
from e2urec.data.prepare import TITLES, load_splits
from e2urec.deploy import integrity
from e2urec.deploy.events import Event
from e2urec.deploy.folder import Keyer, Layout, key_folder, read_key, tree_hash, write_atomic
from e2urec.deploy.intake import status
from e2urec.deploy.ledger import Ledger
from e2urec.deploy.purge import read_split
from e2urec.weights import check_weights

# Files a model folder made by `e2urec forget` carries: they list forgotten ids in clear.
LEAKY = ("forget_report.json",)
# The bench's stage markers: a data folder's holds its manifest, forgotten users and all, and
# no purge rewrites it. A deployment has no use for them.
MARKER = ".stage.json"


def init(
    data, model, out, method: str = "e2urec", options=None, key_file=None, exact=None, base=None
) -> dict:
    """Create the deployment folder `out` from a prepared data folder and a trained model;
    returns `status`. `options` holds the method's options and, under "verify", the
    verification bounds (`e2urec.deploy.verification.Bounds`); `apply` uses them unless told
    otherwise. `key_file`: the HMAC key to use (at least 32 bytes), kept where it is; without
    one a new key is made in `folder.key_folder()` (mode 0600), outside the deployment.
    `exact` ("apa"): two-phase deletions; the exact method's model is trained now from the
    backbone the model was trained from (its options under `options[exact]`) and served as v1,
    and each request is carried out approximately (`method`), then exactly (`exact_phase`).
    `base`: the model a PEFT adapter made elsewhere sits on (`model.loader.load`)."""
    from e2urec.model import loader

    data, model, out = Path(data), Path(model), Path(out)
    if key_file is not None:
        key_file = Path(key_file).resolve()
        read_key(key_file)  # an empty, short, weak, shared or unreadable key is refused
        for folder in (data, model, out):
            if key_file.is_relative_to(folder.resolve()):
                raise ValueError(
                    f"--key-file {key_file}: inside {folder}, which the deployment copies or "
                    "is; keep the key outside it"
                )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty; give a new folder for the deployment")
    splits = load_splits(data)
    if not model.is_dir():
        raise FileNotFoundError(f"{model}: no such model folder")
    loader.check_base(model, base)
    check_weights(model)
    leaky = [name for name in LEAKY if (model / name).exists()]
    if leaky:
        raise ValueError(
            f"{model} was made by `e2urec forget` ({leaky[0]} lists forgotten ids in clear); "
            "start from the original model and submit those deletions as requests"
        )
    settings = _settings(method, dict(options or {}), exact)
    if exact is not None and _train_report(model).get("base") is None:
        raise ValueError(
            f"--exact {exact} trains from the backbone, and {model}/train_report.json names none"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    made = None
    try:
        if key_file is None:
            key_file = made = _new_key()
        settings = {**settings, "key_file": str(key_file)}
        _build(Layout(tmp), data, model, settings, splits["train"], base)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made is not None:
            made.unlink(missing_ok=True)
        raise
    return status(out)


def _new_key() -> Path:
    """A fresh key in the user's key folder, readable by its owner only."""
    folder = key_folder()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = (folder / f"{uuid.uuid4().hex}.key").resolve()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())
    return path


def _settings(method: str, options: dict, exact: str | None = None) -> dict:
    """Method, its options and the verification bounds, each checked now rather than at apply;
    with `exact`, the exact method and its options (`options[exact]`)."""
    from e2urec.deploy.exact_phase import METHODS
    from e2urec.deploy.verification import Bounds
    from e2urec.methods import get_method

    bounds = from_dict(Bounds, options.pop("verify", None), "verify")
    more = {}
    if exact is not None:
        if exact not in METHODS:
            raise ValueError(f"--exact must be one of {METHODS}, got {exact!r}")
        exact_options = options.pop(exact, None) or {}
        get_method(exact, exact_options)
        more = {"exact": exact, "exact_options": exact_options}
    get_method(method, options)
    return {"method": method, "options": options, "verify": asdict(bounds), **more}


def _build(layout: Layout, data: Path, model: Path, settings: dict, train: list, base) -> None:
    shutil.copytree(data, layout.data, ignore=shutil.ignore_patterns(MARKER))
    v0 = layout.version("v0")
    adapter_base = _copy_model(model, v0, base, read_answers(data))
    report = _train_report(model)
    config = {
        **settings,
        "base": _locate_base(model, report.get("base")) or adapter_base,
        "train_config": report.get("config"),
    }
    # What Retrain and the exact phase train from: hashed now, checked as the versions are.
    base_record = integrity.backbone_record(layout, config["base"])
    write_atomic(layout.config_file, json.dumps(config, indent=2) + "\n")
    write_atomic(layout.catalogue, json.dumps(catalogue(layout.data), indent=1) + "\n")
    event = {
        "event": Event.CREATED,
        "version": "v0",
        "model_after": tree_hash(v0),
        "users": len({s.user for s in train}),
        "samples": len(train),
        "details": {
            "method": settings["method"],
            "verify": settings["verify"],
            "key": Keyer(read_key(Path(settings["key_file"]))).fingerprint(),
            "chain": integrity.chain(layout, v0),
            "backbone": base_record,
            "data": integrity.digests(integrity.read_splits(layout.data)),
        },
    }
    with Ledger.create(layout.ledger) as ledger:
        ledger.append([event])
        layout.set_live("v0")
        if settings.get("exact"):
            _first_exact(layout, ledger, config, event["model_after"])


def _first_exact(layout: Layout, ledger: Ledger, config: dict, v0_hash: str) -> None:
    """The exact method's model, trained from the backbone on the live data: v1, served."""
    from e2urec.deploy.exact_phase import train_first

    made = train_first(
        layout, layout.base_path(config), config["train_config"], config["exact_options"]
    )
    v1 = layout.version("v1")
    event = {
        "event": Event.CREATED,
        "version": "v1",
        "method": config["exact"],
        "model_before": v0_hash,
        "model_after": tree_hash(v1),
        "details": {"exact": config["exact"], "chain": integrity.chain(layout, v1), **made},
    }
    ledger.append([event])
    layout.set_live("v1")


def _train_report(model: Path) -> dict:
    path = model / "train_report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _copy_model(src: Path, dst: Path, base: str | None, answers) -> str | None:
    """Copy a model folder; what it builds on (an adapter's base, an ensemble's shards) outside
    the folder is then named by absolute path, as the relative one no longer leads there. A
    model made elsewhere gets the `e2urec.json` this package's own carry (its answer words, an
    adapter's base), so every later load and the ledger's check read it alike; returns that
    adapter's base."""
    from e2urec.model import backbone, loader

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MARKER))
    if not backbone.read_meta(src):
        return loader.describe(dst, base, answers)
    meta, was = backbone.read_meta(dst), backbone.read_meta(dst)

    def outside(name: str) -> str:
        found = Path(backbone.resolve(src, name))
        inside = not found.exists() or found.resolve().is_relative_to(src.resolve())
        return name if inside else str(found.resolve())

    if meta.get("kind") == "lora":
        meta["base"] = outside(meta["base"])
        if meta.get("peft_base"):
            meta["peft_base"] = outside(meta["peft_base"])
    if meta.get("kind") == "ensemble":
        meta["shards"] = [outside(s) for s in meta["shards"]]
    if meta != was:
        (dst / backbone.META).write_text(json.dumps(meta, indent=2) + "\n")
    return None


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
    """{"kind": "movie" | "book", "items": {item: title}}: the items `prepare` recorded, or
    for data prepared before it did, the paper prompts' targets."""
    recorded = json.loads((data / TITLES).read_text()) if (data / TITLES).is_file() else {}
    if "items" in recorded:
        return {"kind": recorded["kind"], "items": recorded["items"]}
    items: dict[str, str] = {}
    kind = "movie"
    for path in sorted(data.glob("*.jsonl")):
        for s in real(read_split(path)):  # an invented canary title is no item to serve
            title = target_title(s)
            if title is not None:
                items.setdefault(s.item, title)
            if "the following books" in s.input:
                kind = "book"
    return {"kind": kind, "items": items}
