"""The embedded default backbone: a small T5 built from a config, no weights to download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from e2urec.data.sample import NO, YES
from e2urec.model.backbone import Recommender, save, wrap
from e2urec.model.tokenizer import train_tokenizer


@dataclass
class TinyT5:
    vocab_size: int = 4000
    d_model: int = 128
    d_ff: int = 512
    heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 2
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_ff", "heads", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"tiny: {name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"tiny T5 dropout must be in [0, 1), got {self.dropout}")


def build_tiny_t5(
    texts: list[str],
    out: str | Path,
    size: TinyT5 | None = None,
    answers: tuple[str, str] = (YES, NO),
) -> Recommender:
    """Train a tokenizer on `texts` and the `answers`, build a randomly initialised T5, save
    both to `out`."""
    size = size or TinyT5()
    tokenizer = train_tokenizer(texts, size.vocab_size, answers)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=size.d_model,
        d_kv=size.d_model // size.heads,
        d_ff=size.d_ff,
        num_layers=size.encoder_layers,
        num_decoder_layers=size.decoder_layers,
        num_heads=size.heads,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        feed_forward_proj="relu",
        dropout_rate=size.dropout,
    )
    torch.manual_seed(size.seed)
    model = T5ForConditionalGeneration(config)
    rec = wrap(model, tokenizer, str(out), answers)
    save(rec, model, out, base=None, built_from="TinyT5", size=size.__dict__)
    return rec
