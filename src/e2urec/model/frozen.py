"""A frozen bottom: with LoRA on the top L decoder layers only, the layers below depend on
nothing that trains, so their output for a sample is computed once and the top runs from it.

`BottomStates` holds, per sample (prompt and answer), the hidden states that leave the bottom
layers, in float16 (or bfloat16), and saves them to one safetensors file keyed by a digest of
the sample's text: derived data, which can be deleted sample by sample. `forward` then runs only
the top layers (and the language-model head at the answer positions, as `scoring.forward`).
Decoder-only models with a Llama-like layout (`model.layers`, `model.norm`) only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from e2urec.data.sample import NO, YES, Sample
from e2urec.model import gguf, loader
from e2urec.model.apa import Router
from e2urec.model.backbone import Recommender, read_meta, resolve
from e2urec.model.ensemble import Ensemble
from e2urec.model.lora import add_lora
from e2urec.model.scoring import AnswerLogits, batches, by_length, encode, forward

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FILE = "states.safetensors"  # in a data folder's bottom/: the states a bench's trainings share


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The stack of decoder layers inside a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if getattr(base.config, "is_encoder_decoder", False) or not hasattr(inner, "layers"):
        raise ValueError(
            f"a frozen bottom needs a decoder-only LM with Llama-like layers, "
            f"not {type(base).__name__}"
        )
    return inner


def split(model: torch.nn.Module, top_layers: int) -> int:
    """Index of the lowest trained layer when adapters sit on the top `top_layers` layers."""
    count = len(decoder(model).layers)
    if not 1 <= top_layers <= count:
        raise ValueError(f"top_layers must be in [1, {count}] for this model, got {top_layers}")
    return count - top_layers


def top_indices(model: torch.nn.Module, top_layers: int) -> list[int]:
    """The numbers of the top `top_layers` decoder layers."""
    start = split(model, top_layers)
    return list(range(start, start + top_layers))


def add_top_lora(model, top_layers: int, rank: int, alpha: int, dropout: float, name="default"):
    """LoRA on the top `top_layers` decoder layers only; everything else frozen."""
    return add_lora(model, rank, alpha, dropout, name=name, layers=top_indices(model, top_layers))


def tune_top(model: torch.nn.Module, start: int) -> torch.nn.Module:
    """Full tuning above the stored states: every parameter of decoder layers >= `start` and of
    what reads their output (the final norm, an untied LM head) trains; the embeddings and the
    layers below stay frozen, so the states stay this model's and a saved copy keeps the
    backbone's bottom (and is scored right at full depth). The full-tuning papers tune the whole
    model: this tunes as much of it as the states allow. The norm and an untied head sit above
    them, so they train; a head tied to the embeddings (SmolLM2, Gemma 3) is the embedding
    matrix, the bottom's input, so it stays frozen with them."""
    inner = decoder(model)
    model.requires_grad_(False)
    for layer in list(inner.layers)[start:]:
        layer.requires_grad_(True)
    inner.norm.requires_grad_(True)
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        head.requires_grad_(True)
    return model


@contextlib.contextmanager
def only_tops(models, start: int):
    """`only_layers(model, start, None)` on each of `models` at once (an ensemble's shards)."""
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(only_layers(model, start, None))
        yield


@contextlib.contextmanager
def only_layers(model: torch.nn.Module, start: int, stop: int | None, norm: bool = True):
    """Run `model` through decoder layers [start, stop) only (without the final norm unless
    `norm`); the modules themselves, so gradients reach the same parameters. Parameter names
    inside the block are renumbered: save nothing there."""
    inner = decoder(model)
    layers, final = inner.layers, inner.norm
    # Gemma 3 reads layer i's attention kind (sliding window or full, each with its own rotary
    # base) from config.layer_types[i]: numbered from 0 again, the kept layers need theirs.
    types = getattr(inner.config, "layer_types", None)
    inner.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if types is not None:
        inner.config.layer_types = types[start:stop]
    if not norm:
        inner.norm = torch.nn.Identity()
    try:
        yield
    finally:
        inner.layers, inner.norm = layers, final
        if types is not None:
            inner.config.layer_types = types


def key(prompt: str, answer: str) -> str:
    return hashlib.sha256(f"{prompt}\0{answer}".encode()).hexdigest()[:32]


class BottomStates:
    """The bottom's output per (prompt, answer), below decoder layer `start`."""

    def __init__(self, rec: Recommender, start: int, dtype: str = "float16"):
        if rec.seq2seq:
            raise ValueError("a frozen bottom needs a causal LM, not a seq2seq model")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        self.rec, self.start, self.dtype = rec, start, DTYPES[dtype]
        self.states: dict[str, torch.Tensor] = {}
        self.parts: list | None = None  # an ensemble's shards on this bottom, when it scores one

    def __len__(self) -> int:
        return len(self.states)

    @torch.no_grad()
    def fill(self, model, samples: list[Sample], batch_size: int = 16, answers=None) -> int:
        """Compute the states of the samples not yet held; returns how many were computed."""
        answers = answers or [s.output for s in samples]
        todo = {}
        for s, a in zip(samples, answers):
            todo.setdefault(key(s.input, a), (s, a))
        todo = [v for k, v in todo.items() if k not in self.states]
        if not todo:
            return 0
        model = self.parts[0] if self.parts else model  # the shards share the bottom
        was = model.training
        model.eval()
        device = next(model.parameters()).device
        pending = [s for s, _ in todo]
        for idx in batches(by_length(self.rec, pending), batch_size):
            chunk = [todo[i] for i in idx]
            enc = encode(self.rec, [s for s, _ in chunk], [a for _, a in chunk])
            enc = {k: v.to(device) for k, v in enc.items()}
            with only_layers(model, 0, self.start, norm=False):
                hidden = decoder(model)(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    position_ids=enc["position_ids"],
                    use_cache=False,
                ).last_hidden_state
            stored = hidden.to(self.dtype)
            if not torch.isfinite(stored).all():
                raise FloatingPointError(f"bottom states overflow {self.dtype}: use bfloat16")
            for row, (s, a) in enumerate(chunk):
                keep = enc["attention_mask"][row].bool()
                self.states[key(s.input, a)] = stored[row, keep].cpu().clone()
        model.train(was)
        return len(todo)

    def inputs(self, samples: list[Sample], answers=None) -> dict:
        """`encode`'s batch with the bottom's states, left-padded, in place of the ids."""
        answers = answers or [s.output for s in samples]
        enc = encode(self.rec, samples, answers)
        mask = enc.pop("attention_mask")
        enc.pop("input_ids")
        width = mask.shape[1]
        rows = [self.states[key(s.input, a)] for s, a in zip(samples, answers)]
        hidden = torch.zeros(len(rows), width, rows[0].shape[-1])
        for i, row in enumerate(rows):
            hidden[i, width - len(row) :] = row.float()
        return {**enc, "attention_mask": mask, "inputs_embeds": hidden}

    def forward(self, model, samples: list[Sample], answers=None) -> AnswerLogits:
        """`scoring.forward` for `model`, running only its layers from `start` up."""
        device = next(model.parameters()).device
        return self.run(model, {k: v.to(device) for k, v in self.inputs(samples, answers).items()})

    def run(self, model, batch: dict, parts=None) -> AnswerLogits:
        """`scoring.forward` of a batch from `inputs` (on the model's device), from `start` up.
        `parts`: the LMs inside `model` that read the batch, when it is not one (an ensemble's
        shards, each of them on this bottom)."""
        with only_tops(parts or self.parts or [model], self.start):
            return forward(self.rec, model, batch)

    def drop(self, samples: list[Sample]) -> int:
        """Delete the entries of `samples` (under either answer); returns how many were held."""
        keys = {key(s.input, a) for s in samples for a in (YES, NO, s.output)}
        found = keys & self.states.keys()
        for k in found:
            del self.states[k]
        return len(found)

    def save(self, path: str | Path) -> None:
        meta = {"start": str(self.start), "model": self.rec.path}
        _save(self.states, path, {**meta, "answers": json.dumps(list(self.rec.answers))})

    def load(self, path: str | Path, source: str | None = None) -> BottomStates:
        """Add the states stored at `path`; they must be of the bottom of `source` (default: this
        model; `bottom_source` finds the model a tuned one shares its bottom with)."""
        source = source or self.rec.path
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        if int(meta["start"]) != self.start or not _same(meta.get("model"), source):
            raise ValueError(
                f"{path}: states of {meta.get('model')} below layer {meta['start']}, "
                f"not of {source} below layer {self.start}"
            )
        # The states are keyed by the label ("Yes."/"No."), but hold the answer words' tokens:
        # another model's words would be scored from inputs it never reads. Files from before
        # the words were recorded hold "Yes."/"No.".
        answers = json.loads(meta.get("answers", json.dumps([YES, NO])))
        if answers != list(self.rec.answers):
            raise ValueError(
                f"{path}: states of prompts answered {answers}, not {list(self.rec.answers)}"
            )
        self.states.update(load_file(str(path)))
        return self


def stored(rec: Recommender, top_layers: int, dtype: str, cache, source: str, samples, batch_size):
    """The bottom states of `source` below the top `top_layers` layers of `rec` (a model on that
    bottom): those stored in the file `cache` (if any), plus `samples`' computed with `rec`
    where missing (kept in memory only: the file is a stage's, hashed into fingerprints)."""
    states = BottomStates(rec, split(rec.model, top_layers), dtype)
    if cache is not None:
        states.load(cache, source)
    states.fill(rec.model, samples, batch_size)
    return states


def bottom_source(path: str | Path, start: int) -> str | None:
    """The full model under every adapter of the model at `path` (LoRA folders on their bases),
    when all of those adapters sit on decoder layers >= `start`: that model's bottom states are
    then this one's too. None when an adapter reaches lower, or the chain holds another kind."""
    path = str(path)
    if path in gguf.FAMILIES and not Path(path).exists():
        path = gguf.folder(path)
    meta = read_meta(path)
    if meta.get("kind", "full") == "full":
        return path
    if meta["kind"] != "lora":
        return None
    adapter = json.loads((Path(path) / "adapter_config.json").read_text())
    layers = adapter.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    # Trained modules or token rows outside the layers (embeddings) change the bottom too.
    if adapter.get("modules_to_save") or adapter.get("trainable_token_indices"):
        return None
    if not layers or min(layers) < start:
        return None
    return bottom_source(resolve(path, meta["base"]), start)


@dataclass(frozen=True)
class StoredBottom:
    """A file of `base`'s bottom states below its top `top_layers` layers (the bench's store)."""

    base: str
    top_layers: int
    dtype: str
    path: str

    def states_for(self, rec: Recommender) -> BottomStates | None:
        """The stored states, to score `rec` from, when `rec`'s weights below its top layers
        (embeddings included) equal `base`'s, or for an ensemble each shard's: compared tensor
        by tensor, whatever method made `rec`. None when any differs, or for APA (then `rec`
        runs at full depth)."""
        if rec.seq2seq or not Path(self.path).is_file():
            return None
        ensemble = isinstance(rec.model, Ensemble)
        members = list(rec.model.shards) if ensemble else [rec.model]
        # APA routes each batch by its prompt's token ids, which a pass from states has not.
        if any(isinstance(m, Router) for member in members for m in member.modules()):
            return None
        start = split(members[0], self.top_layers)
        backbone = loader.load(self.base, answers=rec.answers)
        theirs = _bottom_weights(backbone.model, start)
        for member in members:
            ours = _bottom_weights(member, start)
            if theirs.keys() != ours.keys() or any(
                not torch.equal(ours[k], v) for k, v in theirs.items()
            ):
                return None
        states = BottomStates(rec, start, self.dtype).load(self.path, backbone.path)
        states.parts = members if ensemble else None
        return states


def _bottom_weights(model, start: int) -> dict[str, torch.Tensor]:
    """The parameters the output of decoder layers below `start` depends on."""
    inner = decoder(model)
    out = {f"embed.{k}": v for k, v in inner.embed_tokens.state_dict().items()}
    for i, layer in enumerate(list(inner.layers)[:start]):
        out.update({f"{i}.{k}": v for k, v in layer.state_dict().items()})
    return out


def _same(a: str | None, b: str) -> bool:
    """The same model: the same name, or two spellings of one folder."""
    return a == b or (a is not None and Path(a).exists() and Path(a).resolve() == Path(b).resolve())


def _save(states: dict, path: str | Path, meta: dict) -> None:
    """One safetensors file, written to a temporary name and renamed: never half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(dict(sorted(states.items())), str(tmp), metadata=meta)
    os.replace(tmp, path)


def store(
    model: str,
    samples: list[Sample],
    top_layers: int,
    dtype: str,
    path,
    batch_size=16,
    answers=None,
):
    """Compute the bottom's states of `samples` below the top `top_layers` layers of `model` (a
    backbone folder or name; `answers`: the data's answer words, which a causal LM's inputs end
    with) and save them to `path`; returns how many were stored."""

    rec = loader.load(model, answers=answers)
    states = BottomStates(rec, split(rec.model, top_layers), dtype)
    states.fill(rec.model, samples, batch_size)
    states.save(path)
    return len(states)


def drop_stored(path: str | Path, samples: list[Sample]) -> int:
    """Delete `samples`' entries (under either answer) from a stored file; returns how many."""
    keys = {key(s.input, a) for s in samples for a in (YES, NO, s.output)}
    with safe_open(str(path), "pt") as f:
        meta, gone = f.metadata(), keys & set(f.keys())
    if gone:
        states = load_file(str(path))
        _save({k: v for k, v in states.items() if k not in gone}, path, meta)
    return len(gone)
