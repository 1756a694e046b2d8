"""Resumable stages: a run started again skips every stage that already finished with the same
config and inputs, and redoes the rest.

A stage owns one folder. When its work is done, a marker (`.stage.json`: the hash of its
config and inputs, and its JSON result) is written last, atomically; a folder without a current
marker (never run, interrupted, or made from another config) is cleared and the stage redone.
An input that is itself a stage folder counts by its marker's hash, so redoing a stage redoes
every stage that reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER = ".stage.json"


def fingerprint(config, inputs: Iterable[str | Path] = ()) -> str:
    """sha256 of the config (as sorted JSON) and of each input file or folder."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for item in inputs:
        h.update(_input_hash(Path(item)).encode())
    return h.hexdigest()


def _input_hash(path: Path) -> str:
    marker = path / MARKER
    if marker.is_file():
        return json.loads(marker.read_text())["digest"]
    if path.is_file():
        return _file_hash(path)
    if path.is_dir():
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(file.relative_to(path)).encode() + _file_hash(file).encode())
        return h.hexdigest()
    return f"missing:{path}"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _to_stderr(message: str) -> None:
    # Progress, like tqdm's: stdout stays for results (`e2urec tune` prints YAML there).
    print(message, file=sys.stderr)


def stage(
    folder: str | Path,
    config,
    inputs: Iterable[str | Path],
    work: Callable[[Path], object],
    say: Callable[[str], None] = _to_stderr,
):
    """`work(folder)`'s JSON-able result, from the marker when the stage already finished with
    this config and these inputs; otherwise the folder is cleared and `work` runs."""
    folder = Path(folder)
    digest = fingerprint(config, inputs)
    marker = folder / MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("digest") == digest:
            say(f"{folder}: finished earlier with the same config and inputs; reused")
            return saved["result"]
        say(f"{folder}: config or inputs changed; redoing")
    elif folder.exists():
        say(f"{folder}: not finished; redoing")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = work(folder)
    _write(marker, {"digest": digest, "result": result})
    return result


def _write(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def local_inputs(model: str) -> list[str]:
    """A model that is a local folder is an input whose change redoes what uses it."""
    return [model] if Path(model).exists() else []
