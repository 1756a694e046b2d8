"""Load any model folder: a full checkpoint, a LoRA adapter on the folder its `e2urec.json`
names (loaded recursively and merged, so an unlearning adapter on a LoRA-tuned recommender loads
like any other model), an ensemble of shard folders (SISA, RecEraser), shard adapters mixed per
sample (APA), or a name in `gguf.FAMILIES`."""

from __future__ import annotations

from pathlib import Path

import torch

from e2urec.model import gguf
from e2urec.model.apa import assemble_apa
from e2urec.model.backbone import Recommender, load_checkpoint, read_meta, resolve, wrap
from e2urec.model.ensemble import assemble


def load(path: str | Path, dtype: torch.dtype = torch.float32) -> Recommender:
    """Load a model folder, a name in `gguf.FAMILIES` (a folder made on first use from weights a
    package ships), or a hub name (its weights in the local cache)."""
    path = str(path)
    if path in gguf.FAMILIES and not Path(path).exists():
        path = gguf.folder(path)
    meta = read_meta(path)
    if meta.get("kind") == "ensemble":
        members = [load(resolve(path, shard), dtype) for shard in meta["shards"]]
        return assemble(path, meta, members)
    if meta.get("kind") == "apa":
        return assemble_apa(path, meta, load(resolve(path, meta["base"]), dtype))
    if meta.get("kind") == "lora":
        from peft import PeftModel

        base = load(resolve(path, meta["base"]), dtype)
        model = PeftModel.from_pretrained(base.model, path).merge_and_unload()
        return wrap(model, base.tokenizer, path)
    return load_checkpoint(path, dtype)
