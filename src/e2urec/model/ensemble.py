"""Shard ensembles (SISA, RecEraser): several recommenders answering as one model.

The shards' logits are averaged (SISA) or weighted, per position, by an attention over the
shards' last hidden states (RecEraser). `Ensemble(**batch).logits` looks like one transformers
model's output, so scoring and evaluation treat an ensemble like any recommender. On disk an
ensemble is a folder whose `e2urec.json` (kind "ensemble") lists the shard folders relative to
it and names the attention's weights file, if any.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from e2urec.model import backbone

AGGREGATOR = "aggregator.pt"


@dataclass
class EnsembleOutput:
    logits: torch.Tensor


class ShardAttention(nn.Module):
    """RecEraser's aggregation: score_s = q . tanh(W_s h_s + b_s), softmax over the shards.

    Each shard has its own transfer W_s (independently trained shards do not share a hidden
    space); the query starts at zero, so training starts from SISA's plain average.
    """

    def __init__(self, shards: int, hidden: int, size: int = 64):
        super().__init__()
        self.transfer = nn.Parameter(torch.randn(shards, hidden, size) * hidden**-0.5)
        self.bias = nn.Parameter(torch.zeros(shards, size))
        self.query = nn.Parameter(torch.zeros(size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[shards, batch, length, hidden] states -> [shards, batch, length, 1] weights."""
        keys = torch.einsum("sbtd,sda->sbta", hidden.to(self.query.dtype), self.transfer)
        scores = torch.tanh(keys + self.bias[:, None, None]) @ self.query
        return torch.softmax(scores, dim=0).unsqueeze(-1)


class Ensemble(nn.Module):
    def __init__(self, shards: list[nn.Module], attention: ShardAttention | None = None):
        super().__init__()
        self.shards = nn.ModuleList(shards)
        self.attention = attention
        self.config = shards[0].config  # `backbone.wrap` reads the architecture from it

    def train(self, mode: bool = True):
        super().train(mode)
        self.shards.eval()  # the members are fixed: no dropout while the attention trains
        return self

    def forward(self, **inputs) -> EnsembleOutput:
        weighted = self.attention is not None
        outs = [m(**inputs, output_hidden_states=weighted) for m in self.shards]
        logits = torch.stack([o.logits for o in outs])
        if not weighted:
            return EnsembleOutput(logits.mean(0))
        # A causal LM may return logits for the last positions only (`logits_to_keep`).
        states = torch.stack([_last_hidden(o)[:, -logits.shape[2] :] for o in outs])
        return EnsembleOutput((self.attention(states) * logits).sum(0))


def _last_hidden(out) -> torch.Tensor:
    """The states the LM head reads: the decoder's for seq2seq models."""
    states = getattr(out, "decoder_hidden_states", None) or out.hidden_states
    return states[-1]


def save_ensemble(
    out: str | Path, shards: list[str | Path], attention: ShardAttention | None = None, **info
) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": "ensemble",
        "shards": [os.path.relpath(Path(s).resolve(), out.resolve()) for s in shards],
        "aggregator": AGGREGATOR if attention is not None else None,
        **info,
    }
    if attention is not None:
        torch.save(attention.state_dict(), out / AGGREGATOR)
    (out / backbone.META).write_text(json.dumps(meta, indent=2) + "\n")


def assemble(path: str, meta: dict, members: list[backbone.Recommender]) -> backbone.Recommender:
    """The ensemble in folder `path` from its loaded shard models and its stored aggregator."""
    attention = None
    if meta.get("aggregator"):
        state = torch.load(Path(path) / meta["aggregator"], weights_only=True)
        attention = ShardAttention(*state["transfer"].shape)
        attention.load_state_dict(state)
    # The members are placed by `load`; the aggregator built here must join them.
    model = backbone.to_device(Ensemble([m.model for m in members], attention))
    return backbone.wrap(model, members[0].tokenizer, path, members[0].answers)
