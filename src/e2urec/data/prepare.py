"""`e2urec prepare`: raw data -> JSON Lines splits + manifest, written all at once or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from e2urec import __version__
from e2urec.data import sources
from e2urec.data.canaries import real, unique
from e2urec.data.manifest import read_manifest
from e2urec.data.prompt import KINDS, Template, template_prompts
from e2urec.data.protocol import Protocol, Splits, make_splits, split_samples
from e2urec.data.sample import Sample, read_jsonl, write_jsonl
from e2urec.data.sampling import split_stats
from e2urec.data.sources import PROMPTS
from e2urec.data.sources.engine import workspace
from e2urec.data.sources.prompts import checksum as prompts_checksum
from e2urec.data.sources.prompts import read_prompts

SPLITS = ("train", "valid", "test", "retain", "forget")
TITLES = "titles.json"
MAX_TITLES = 20_000  # enough text for a tokenizer; GoodReads has 2.3M books
# Written only when the protocol asks for them (`holdout`, `canaries`); read as empty otherwise.
OPTIONAL = ("holdout", "canary_control")


def prepare(
    out: str | Path,
    dataset: str = "movielens",
    raw: str | Path | None = None,
    protocol: Protocol | None = None,
    memory_limit: str | None = None,
    **loader_options,
) -> dict:
    """Build the splits of `dataset` and write them to `out`; returns the manifest.

    `memory_limit` (such as "2GB"; default an eighth of the machine) caps the DuckDB engine,
    which spills to a temporary folder beside `out` beyond it.
    """
    protocol = protocol or Protocol()
    if dataset == PROMPTS:
        return _prepare_prompts(out, raw, protocol, loader_options)
    with workspace(out, memory_limit) as db:
        data = sources.load(dataset, raw, db=db, **loader_options)
        splits = make_splits(data, protocol)
        titles = catalogue_titles(data.db)
    manifest = _manifest(dataset, data.files, data.checksum(), protocol, splits)
    # The text itself, so a deployment builds prompts as these were built, file or not.
    manifest["template"] = Template.named(protocol.template).describe()
    catalogue = {
        "kind": data.kind.noun,
        "history": protocol.history,
        "titles": titles,
        "items": splits.titles,  # what a deployment serves, whatever the prompts look like
    }
    write_splits(out, splits, manifest, catalogue)
    return manifest


def _manifest(dataset: str, files, checksum: str, protocol: Protocol, splits: Splits) -> dict:
    return {
        "dataset": dataset,
        "raw": [str(p) for p in files],
        "source_checksum": checksum,
        "protocol": asdict(protocol),
        "counts": {name: len(splits[name]) for name in SPLITS + OPTIONAL},
        "candidates": splits.candidates,
        "users": {
            "train": len({s.user for s in splits["train"]}),
            "forgotten": len(splits.forgotten),
        },
        "forgotten_users": splits.forgotten,
        # Hyperparameters may be chosen on the tune half; forget metrics use the eval half.
        "forgotten_halves": splits.halves,
        "positive_rate": {
            name: round(sum(s.label for s in splits[name]) / max(1, len(splits[name])), 4)
            for name in SPLITS
        },
        "split_stats": {name: split_stats(real(splits[name])) for name in (*SPLITS, "holdout")},
        "canaries": len(unique(splits["train"])),
        "e2urec_version": __version__,
    }


# Protocol options that build prompts: imported prompts are used as they are.
BUILDING = ("history", "min_history", "canaries", "template")


def _prepare_prompts(out, raw, protocol: Protocol, options: dict) -> dict:
    if raw is None:
        raise ValueError("prompts: give the file of prompts (--raw FILE)")
    if options:
        raise ValueError(f"prompts: unknown option(s) {', '.join(sorted(options))}; it takes: none")
    default = Protocol()
    given = [n for n in BUILDING if getattr(protocol, n) != getattr(default, n)]
    if given:
        raise ValueError(
            f"prompts: imported prompts are used as they are, and {', '.join(given)} would "
            f"build new ones; leave {'them' if len(given) > 1 else 'it'} out"
        )
    samples, shows = read_prompts(raw, protocol.answers)
    kept = samples[-protocol.last :]
    if len(kept) < 3:
        raise ValueError(f"{raw}: {len(kept)} record(s); need 3 or more")
    splits = split_samples(kept, protocol, len(samples))
    manifest = _manifest(PROMPTS, [raw], prompts_checksum(raw), protocol, splits)
    # No template: a deployment of these scores prompts as given. Without `history`, no sample
    # says which ratings its prompt shows, so a deletion of one rating cannot be carried out.
    manifest.update(template=None, history_items=shows)
    catalogue = {"kind": None, "history": None, "titles": [], "items": {}}
    write_splits(out, splits, manifest, catalogue)
    return manifest


def catalogue_titles(db) -> list[str]:
    """Titles of the source's items, chosen by a hash of the item id: what the item catalogue
    holds, whichever users rated what."""
    query = (
        "SELECT min(title) FROM interactions GROUP BY item "
        f"ORDER BY md5(item), item LIMIT {MAX_TITLES}"
    )
    return [row[0] for row in db.execute(query).fetchall()]


def template_texts(folder: str | Path) -> list[str]:
    """The prepared data's template prompts over its catalogue titles (data/prompt.py)."""
    path = Path(folder) / TITLES
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: missing (prepared by an older e2urec); prepare the data again"
        )
    catalogue = json.loads(path.read_text())
    template = read_template(folder)
    if template is None:
        raise ValueError(
            f"{folder} holds imported prompts: no template to train the tiny model's tokenizer "
            "on; give a model folder instead of tiny"
        )
    return template_prompts(
        catalogue["titles"], KINDS[catalogue["kind"]], catalogue["history"], template
    )


def read_template(folder: str | Path) -> Template | None:
    """The template a prepared data folder's prompts were built with; None for imported ones."""
    return manifest_template(read_manifest(folder))


def manifest_template(manifest: dict) -> Template | None:
    if manifest.get("dataset") == PROMPTS:
        return None
    return Template.of(manifest.get("template"))


def write_splits(out: str | Path, splits: Splits, manifest: dict, catalogue: dict) -> None:
    """Write into a temporary sibling folder, then swap it in: never a half-written `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        for name in SPLITS + OPTIONAL:
            if name in SPLITS or splits[name]:
                write_jsonl(splits[name], tmp / f"{name}.jsonl")
        (tmp / TITLES).write_text(json.dumps(catalogue) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_splits(folder: str | Path) -> dict[str, list[Sample]]:
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"{folder}: not a prepared data folder (no manifest.json)")
    splits = {name: read_jsonl(folder / f"{name}.jsonl") for name in SPLITS}
    for name in OPTIONAL:
        path = folder / f"{name}.jsonl"
        splits[name] = read_jsonl(path) if path.exists() else []
    return splits
