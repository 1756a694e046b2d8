"""Purge: rewrite a prepared data folder without the samples deletion requests removed.

Which samples go is decided per sample by the one deletion rule (`data.deletion.Eraser`) from
the requests alone (users, (user, item) pairs, and the 'Title (N stars)' strings by which each
deleted rating shows in the paper prompts of samples that record no history, worked out when the
request arrived), so a purge cut short by a crash is simply run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from e2urec.data.deletion import Eraser
from e2urec.data.sample import Sample, read_jsonl, write_jsonl
from e2urec.deploy.folder import write_atomic

Temporary = Callable[[Path], "Path | None"]


def eraser_of(requests: Iterable[dict]) -> Eraser:
    """The rule of request bodies {"users": [...], "interactions": [[u, i]], "shown": [[u, s]]}."""
    requests = list(requests)
    return Eraser(
        frozenset(u for r in requests for u in r["users"]),
        frozenset(tuple(p) for r in requests for p in r["interactions"]),
        frozenset(tuple(p) for r in requests for p in r.get("shown", [])),
    )


def read_split(path: Path) -> list[Sample]:
    """A split file; a purge may have emptied it."""
    return read_jsonl(path) if path.stat().st_size else []


def purge_folder(
    folder: str | Path,
    eraser: Eraser,
    after_file: Callable[[], None] = lambda: None,
    temporary: Temporary = lambda path: None,
):
    """Rewrite every *.jsonl in `folder` without erased samples, then the manifest's counts and
    user lists. Returns the samples removed per file. `temporary(file)`: the recorded name each
    file's replacement is written through (`Layout.temporary`), so that a crash leaves nothing
    the next apply cannot tell from the operator's files."""
    folder = Path(folder)
    removed = {}
    # The frozen bottom's stored states (derived data) first: they are found by the samples,
    # which a purge cut short after rewriting the splits would no longer list.
    stored = sorted(folder.glob("bottom/*.safetensors"))
    if stored:
        from e2urec.model.frozen import drop_stored

        erased = [s for p in folder.glob("*.jsonl") for s in read_split(p) if eraser.erases(s)]
        for path in stored:
            removed[f"bottom/{path.name}"] = drop_stored(path, erased)
    for path in sorted(folder.glob("*.jsonl")):
        samples = read_split(path)
        kept = [s for s in samples if not eraser.erases(s)]
        removed[path.name] = len(samples) - len(kept)
        if removed[path.name]:
            write_jsonl(kept, path, temporary(path))
            after_file()
    _rewrite_manifest(folder, eraser, temporary)
    return removed


def write_kept(
    folder: Path, kept: dict[str, list[Sample]], eraser: Eraser | None, temporary: Temporary
) -> None:
    """Rewrite the given split files with the samples kept, then the manifest."""
    for name, samples in kept.items():
        write_jsonl(samples, folder / name, temporary(folder / name))
    _rewrite_manifest(folder, eraser or Eraser(frozenset(), frozenset()), temporary)


def _rewrite_manifest(folder: Path, eraser: Eraser, temporary: Temporary) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in list(manifest.get("counts", {})):
        file = folder / f"{name}.jsonl"
        if file.exists():
            samples = read_split(file)
            manifest["counts"][name] = len(samples)
            if name in manifest.get("positive_rate", {}):
                rate = sum(s.label for s in samples) / max(1, len(samples))
                manifest["positive_rate"][name] = round(rate, 4)
            if name == "train" and "train" in manifest.get("users", {}):
                manifest["users"]["train"] = len({s.user for s in samples})
    if "forgotten_users" in manifest:
        manifest["forgotten_users"] = [
            u for u in manifest["forgotten_users"] if str(u) not in eraser.users
        ]
        if "forgotten" in manifest.get("users", {}):
            manifest["users"]["forgotten"] = len(manifest["forgotten_users"])
    for half, users in manifest.get("forgotten_halves", {}).items():
        manifest["forgotten_halves"][half] = [u for u in users if str(u) not in eraser.users]
    write_atomic(path, json.dumps(manifest, indent=2) + "\n", temporary(path))
