"""The live model behind one reference: loaded aside, then swapped in by one assignment.

Scoring takes the reference once per batch, so it sees either the old model or the new one,
whole; loading a version never blocks scoring with the version before it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from e2urec import deploy as deployment
from e2urec.data.prepare import manifest_template
from e2urec.data.prompt import BOOK, MOVIE, ItemKind, Template
from e2urec.model import loader
from e2urec.model.backbone import Recommender

KINDS = {"movie": MOVIE, "book": BOOK}


@dataclass(frozen=True)
class Catalogue:
    kind: ItemKind | None
    titles: dict[str, str]  # item id -> title
    history: int  # items a prompt shows (the K the model was trained with)
    # How the live data's prompts were built; None: imported as they were, scored as given.
    template: Template | None


@dataclass(frozen=True)
class Live:
    version: str
    rec: Recommender
    catalogue: Catalogue


def read_catalogue(deploy: str | Path) -> Catalogue:
    file = Path(deploy) / "catalogue.json"
    data = json.loads(file.read_text(encoding="utf-8"))
    manifest = json.loads((Path(deploy) / "data" / "manifest.json").read_text(encoding="utf-8"))
    template = manifest_template(manifest)
    if template is not None and data.get("kind") not in KINDS:
        raise ValueError(
            f"{file}: kind must be one of {', '.join(KINDS)}, got {data.get('kind')!r}"
        )
    # K (the items a prompt shows) and the template, as the live data was prepared.
    history = int(manifest["protocol"]["history"])
    return Catalogue(KINDS.get(data["kind"]), dict(data["items"]), history, template)


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
