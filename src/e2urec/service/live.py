"""The live model behind one reference: loaded aside, then swapped in by one assignment.

Scoring takes the reference once per batch, so it sees either the old model or the new one,
whole; loading a version never blocks scoring with the version before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from e2urec import deploy as deployment
from e2urec.data.prompt import BOOK, MOVIE, ItemKind
from e2urec.model import loader
from e2urec.model.backbone import Recommender

KINDS = {"movie": MOVIE, "book": BOOK}


@dataclass(frozen=True)
class Catalogue:
    kind: ItemKind
    titles: dict[str, str]  # item id -> title
    history: int  # items a prompt shows (the K the model was trained with)


@dataclass(frozen=True)
class Live:
    version: str
    rec: Recommender
    catalogue: Catalogue


def read_catalogue(deploy: str | Path) -> Catalogue:
    file = Path(deploy) / "catalogue.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    if data.get("kind") not in KINDS:
        raise ValueError(
            f"{file}: kind must be one of {', '.join(KINDS)}, got {data.get('kind')!r}"
        )
    return Catalogue(KINDS[data["kind"]], dict(data["items"]), history_length(deploy))


def history_length(deploy: str | Path) -> int:
    """K, the items a prompt shows, from the protocol the live data was prepared with."""
    manifest = Path(deploy) / "data" / "manifest.json"
    return int(json.loads(manifest.read_text(encoding="utf-8"))["protocol"]["history"])


def load_live(deploy: str | Path) -> Live:
    """The live version, its model and catalogue, read as one consistent triple."""
    while True:
        version = deployment.status(deploy)["live"]
        path = deployment.live_model(deploy)
        # An apply may switch versions between the two reads; then read again.
        if deployment.status(deploy)["live"] == version:
            break
    return Live(str(version), loader.load(path), read_catalogue(deploy))


class LiveModel:
    def __init__(self, live: Live):
        self._live = live

    def get(self) -> Live:
        return self._live

    def set(self, live: Live) -> None:
        self._live = live  # one reference store: atomic for every reader
