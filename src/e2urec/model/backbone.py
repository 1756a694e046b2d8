"""Load a recommender backbone (seq2seq or causal LM) with its tokenizer and Yes/No answer tokens.

A model folder is a full checkpoint (`save_pretrained`), a LoRA adapter or an ensemble, each
described by its `e2urec.json`; `model.loader.load` reads all three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from e2urec.data.sample import NO, YES

META = "e2urec.json"


@dataclass
class Recommender:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    seq2seq: bool
    yes_id: int
    no_id: int
    path: str
    # The words it answers with, Yes first; samples keep "Yes."/"No." as their label.
    answers: tuple[str, str] = (YES, NO)
    # Where a PEFT adapter made elsewhere was loaded from its own record or `--base`: an
    # adapter saved on top of this model records it, so that it loads again without `--base`.
    adapter_base: str | None = None
    # Token ids per text, filled by `scoring.token_ids`: each prompt is tokenised once per run.
    tokens: dict = field(default_factory=dict, repr=False)


def answer_token(tokenizer: PreTrainedTokenizerBase, answer: str, seq2seq: bool) -> int:
    """The first token of the answer as the model is trained to produce it."""
    text = answer if seq2seq else " " + answer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer cannot encode the answer {answer!r}")
    return ids[0]


def device() -> torch.device:
    """Where models run and are scored: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(model: torch.nn.Module) -> torch.nn.Module:
    return model.to(device())


def attention(config) -> str | None:
    """The attention kernel to load a model with; None: transformers' default (SDPA).

    T5 adds its relative position bias to the attention scores, so SDPA receives a float mask
    and, on a CPU, runs its math path with a fully-masked-row check in every layer: 15% slower
    than the plain attention for the demo's T5 (same outputs to 3e-6). On a GPU SDPA's fused
    kernels win."""
    return "eager" if config.model_type == "t5" and device().type == "cpu" else None


def is_seq2seq(config) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def wrap(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str,
    answers: tuple[str, str] = (YES, NO),
) -> Recommender:
    seq2seq = is_seq2seq(model.config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Over-long prompts lose their oldest history, never the target item and the question.
    tokenizer.truncation_side = "left"
    if not seq2seq:
        tokenizer.padding_side = "left"
    yes, no = (answer_token(tokenizer, a, seq2seq) for a in answers)
    if yes == no:
        token = tokenizer.convert_ids_to_tokens(yes)
        raise ValueError(
            f"{path}: the answers {answers[0]!r} and {answers[1]!r} both start with the token "
            f"{token!r}, and the first token is what is scored; choose answers that differ there"
        )
    return Recommender(model, tokenizer, seq2seq, yes, no, path, tuple(answers))


def load_checkpoint(
    path: str, dtype: torch.dtype = torch.float32, answers: tuple[str, str] = (YES, NO)
) -> Recommender:
    """A full checkpoint folder (or a hub name in the local cache); `model.loader.load` reads
    every kind of model folder."""
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as err:
        raise ValueError(f"cannot load model {path!r}: {err}") from None
    cls = AutoModelForSeq2SeqLM if is_seq2seq(config) else AutoModelForCausalLM
    # On the device from the start: a model loaded for scoring (evaluation, serving, the bench's
    # assessments) otherwise stays on the CPU of a GPU machine.
    model = to_device(cls.from_pretrained(path, dtype=dtype, attn_implementation=attention(config)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return wrap(model, tokenizer, path, answers)


def read_meta(path: str | Path) -> dict:
    file = Path(path) / META
    return json.loads(file.read_text()) if file.exists() else {}


def resolve(folder: str | Path, base: str) -> str:
    """Adapters record their base relative to themselves so run folders can be moved."""
    candidate = Path(folder) / base
    return str(candidate.resolve()) if candidate.exists() else base


def save(
    rec: Recommender, model: PreTrainedModel, out: str | Path, base: str | None, **info
) -> None:
    """Save a full model, or only the adapter when `model` is a peft model on `base`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    rec.tokenizer.save_pretrained(out)
    meta = {"kind": "lora" if hasattr(model, "peft_config") else "full", **info}
    meta["answers"] = list(rec.answers)
    if meta["kind"] == "lora":
        if base is None:
            raise ValueError("an adapter needs the folder of the model it sits on")
        meta["base"] = _relative(base, out)
        if rec.adapter_base is not None:  # `base` is an adapter made elsewhere
            meta["peft_base"] = _relative(rec.adapter_base, out)
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")


def _relative(base: str, out: Path) -> str:
    import os

    if Path(base).exists():
        return os.path.relpath(Path(base).resolve(), out.resolve())
    return base


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
