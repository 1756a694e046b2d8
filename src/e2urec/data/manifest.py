"""What a prepared data folder's manifest says that later steps act on; light to import (the
deletion intake reads it before it loads anything else)."""

from __future__ import annotations

import json
from pathlib import Path

from e2urec.data.sample import NO, YES


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))


def read_answers(folder: str | Path) -> tuple[str, str]:
    """The words a model of this data answers with, Yes first (older folders: "Yes."/"No.")."""
    yes, no = read_manifest(folder)["protocol"].get("answers", (YES, NO))
    return yes, no


def check_interactions(folder: str | Path) -> None:
    """Refuse a deletion of single ratings where the samples do not say what their prompts show."""
    if read_manifest(folder).get("history_items") is False:
        raise ValueError(
            "interaction requests need the prompts' history (the items each prompt shows), and "
            "these imported prompts have none: forget whole users, or prepare the prompts again "
            "with a history field"
        )
