"""Load any model folder: a full checkpoint, a LoRA adapter on the folder its `e2urec.json`
names (loaded recursively and merged, so an unlearning adapter on a LoRA-tuned recommender loads
like any other model), a PEFT adapter folder made elsewhere (on the base its
`adapter_config.json` names, or another), an ensemble of shard folders (SISA, RecEraser), shard
adapters mixed per sample (APA), or a name in `gguf.FAMILIES`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from e2urec.data.sample import NO, YES
from e2urec.model import gguf
from e2urec.model.apa import assemble_apa
from e2urec.model.backbone import META, Recommender, load_checkpoint, read_meta, resolve, wrap
from e2urec.model.ensemble import assemble

ADAPTER = "adapter_config.json"


def load(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
    answers: tuple[str, str] | None = None,
) -> Recommender:
    """Load a model folder, a name in `gguf.FAMILIES` (a folder made on first use from weights a
    package ships), or a hub name (its weights in the local cache).

    `base`: the folder a PEFT adapter made elsewhere sits on, in place of the
    `base_model_name_or_path` it records (often a path on the machine it was trained on).
    `answers`: the words the model answers with, Yes first; by default the ones its
    `e2urec.json` records (or its parts' own), else "Yes."/"No."."""
    path = str(path)
    if path in gguf.FAMILIES and not Path(path).exists():
        path = gguf.folder(path)
    meta = read_meta(path)
    # None: a part's own (an ensemble's shards, an adapter's base), else "Yes."/"No.".
    answers = answers or meta.get("answers")
    if meta.get("kind") == "ensemble":
        members = [load(resolve(path, s), dtype, answers=answers) for s in meta["shards"]]
        return assemble(path, meta, members)
    if meta.get("kind") == "apa":
        return assemble_apa(path, meta, load(resolve(path, meta["base"]), dtype, answers=answers))
    if meta.get("kind") == "lora":
        under = meta.get("peft_base") and resolve(path, meta["peft_base"])
        return _merged(
            path, resolve(path, meta["base"]), under, dtype, answers, f"{path}/e2urec.json"
        )
    if is_foreign_adapter(path):
        where = base or _recorded_base(path)
        told = "--base" if base else f"{path}/{ADAPTER}"
        rec = _merged(path, where, None, dtype, answers, told)
        rec.adapter_base = where
        return rec
    return load_checkpoint(path, dtype, tuple(answers or (YES, NO)))


def check_base(model, base: str | None) -> None:
    """`base` is only for a PEFT adapter made elsewhere: said of another model, it is a slip."""
    if base is not None and not is_foreign_adapter(model):
        raise ValueError(
            f"--base: {model} is not a PEFT adapter folder made elsewhere ({ADAPTER} without "
            "e2urec.json); --base names the model such an adapter sits on"
        )


def describe(folder: str | Path, base: str | None, answers: tuple[str, str]) -> str | None:
    """Give the copy of a model made elsewhere in `folder` the `e2urec.json` this package's own
    models carry (its answer words; an adapter's base by absolute path), so that every later
    load reads it alike, without `--base`; returns that base. The model is loaded once here:
    a wrong base, or answers its tokenizer cannot tell apart, stop now."""
    where = load(folder, base=base, answers=answers).adapter_base
    meta = {"kind": "full", "answers": list(answers)}
    if where is not None:
        where = str(Path(where).resolve()) if Path(where).exists() else where
        meta.update(kind="lora", base=where)
    (Path(folder) / META).write_text(json.dumps(meta, indent=2) + "\n")
    return where


def is_foreign_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder that e2urec did not write (it has no `e2urec.json`)."""
    return (Path(path) / ADAPTER).is_file() and not read_meta(path)


def _recorded_base(path: str) -> str:
    config = json.loads((Path(path) / ADAPTER).read_text(encoding="utf-8"))
    where = config.get("base_model_name_or_path")
    if not where:
        raise ValueError(f"{path}/{ADAPTER} names no base model; give its folder with --base")
    return where


def _merged(path: str, where: str, under, dtype, answers, told: str) -> Recommender:
    """The adapter in `path` merged into the model at `where` (named by `told`)."""
    from peft import PeftModel

    try:
        base = load(where, dtype, under, answers)
    except (ValueError, OSError):
        if Path(where).exists():
            raise
        raise ValueError(
            f"{path}: its base {where!r} (from {told}) is no folder here; give the base "
            "model's folder with --base FOLDER"
        ) from None
    try:
        model = PeftModel.from_pretrained(base.model, path).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: the adapter does not fit its base {where!r} (from {told}): {first}"
        ) from None
    return wrap(model, base.tokenizer, path, base.answers)
