"""The live model behind one reference: loaded aside, then swapped in by one assignment.

Scoring takes the reference once per batch, so it sees either the old model or the new one,
whole; loading a version never blocks scoring with the version before it. Only a version the
ledger vouches for is loaded: LIVE alone names nothing the service will serve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from e2urec.data.prepare import manifest_template
from e2urec.data.prompt import BOOK, MOVIE, ItemKind, Template
from e2urec.deploy import integrity
from e2urec.deploy.folder import Layout
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
    layout = Layout(Path(deploy))
    file = layout.catalogue
    data = json.loads(file.read_text(encoding="utf-8"))
    manifest = json.loads((layout.data / "manifest.json").read_text(encoding="utf-8"))
    template = manifest_template(manifest)
    if template is not None and data.get("kind") not in KINDS:
        raise ValueError(
            f"{file}: kind must be one of {', '.join(KINDS)}, got {data.get('kind')!r}"
        )
    # K (the items a prompt shows) and the template, as the live data was prepared.
    history = int(manifest["protocol"]["history"])
    return Catalogue(KINDS.get(data["kind"]), dict(data["items"]), history, template)


def load_live(deploy: str | Path) -> Live:
    """The version the ledger says is live (`integrity.servable`: LIVE names the last applied
    version, its files and base chain hash to their records), its model and catalogue, read as
    one consistent triple. Tampered (or Corrupt) when there is no such version to serve."""
    layout = Layout.of(deploy)
    while True:
        version = integrity.servable(layout, rehash=True)
        rec = loader.load(layout.version(version))
        # An apply may switch versions while the model loads; then read again.
        if layout.live() == version:
            return Live(version, rec, read_catalogue(layout.root))


class LiveModel:
    """The model being served, or none (`refusal` says why) when the deployment gives no
    version the ledger vouches for."""

    def __init__(self, live: Live | None, refusal: str | None = None):
        self._live, self.refusal = live, refusal

    def get(self) -> Live | None:
        return self._live

    @property
    def version(self) -> str | None:
        live = self._live
        return live.version if live is not None else None

    def set(self, live: Live) -> None:
        self._live = live  # one reference store: atomic for every reader
        self.refusal = None

    def refuse(self, reason: str) -> None:
        self.refusal = reason
