"""APA's model (Hu et al., 2024): one LoRA adapter per shard on a frozen backbone, aggregated per
sample at the parameter level, so that a sample is scored in one pass.

Each adapted linear layer computes W x + s sum_k w_k(x) B_k A_k x = (W + s sum_k w_k(x) B_k A_k) x:
the shards' adapter weights summed with the sample's weights. The weights are APA's
sample-adaptive attention: the sample's key (the mean input embedding of its prompt in the frozen
backbone, which never saw user data) retrieves its `neighbours` nearest samples of a pool (valid
samples of retained users) and adapter k weighs softmax_k(-mean loss of adapter k on those
neighbours / temperature): the adapters that answer samples like this one well count more.

On disk an APA model is a folder whose `e2urec.json` (kind "apa") names the backbone, the shard
adapter folders (relative to it) and the pool file: the pool's keys, the adapters' losses on it
and each pool sample's (user, item, time), so that a deletion can drop a user's rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from e2urec.data.sample import NO, YES, Sample
from e2urec.model import backbone
from e2urec.model.scoring import encode, token_ids

POOL = "pool.safetensors"
ADAPTER = "adapter_model.safetensors"


class MixedLinear(nn.Linear):
    """A frozen linear layer plus the shards' LoRA updates weighted per sample (`router.weights`).

    A subclass of nn.Linear on the same weight, so that a further LoRA (an approximate
    unlearning on top of APA) can wrap and merge into it."""

    def __init__(
        self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scaling: float, router
    ):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        # Not saved with the model: an APA model is saved as its adapters and pool only.
        self.register_buffer("down", down.to(base.weight), persistent=False)  # [K, r, in]
        self.register_buffer("up", up.to(base.weight), persistent=False)  # [K, out, r]
        self.scaling = scaling
        self.router = [router]  # in a list: not a submodule, shared by every layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.router[0].weights  # [batch, K]
        low = torch.einsum("b...i,kri->b...kr", x, self.down.to(x.dtype))
        shape = (len(weights),) + (1,) * (low.dim() - 3) + (weights.shape[1], 1)
        mixed = torch.einsum(
            "b...kr,kor->b...o", low * weights.view(shape).to(x.dtype), self.up.to(x.dtype)
        )
        return F.linear(x, self.weight, self.bias) + self.scaling * mixed


class Router(nn.Module):
    """APA's attention: per sample, the shards' weights from their losses on its neighbours."""

    def __init__(
        self,
        embeddings: nn.Embedding,
        pool: dict,
        neighbours: int,
        temperature: float,
        answers: list[list[int]],
        pad_id: int,
    ):
        super().__init__()
        self.embeddings = [embeddings]  # the backbone's own: not a second copy in the state
        self.register_buffer("keys", pool["keys"].float(), persistent=False)  # [N, d], unit norm
        self.register_buffer("losses", pool["losses"].float(), persistent=False)  # [N, K]
        self.neighbours, self.temperature = neighbours, temperature
        self.answers, self.pad_id = answers, pad_id
        self.weights = torch.full((1, self.losses.shape[1]), 1.0 / self.losses.shape[1])

    @torch.no_grad()
    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if not len(self.keys):  # no pool (no retained user has valid samples): a plain average
            self.weights = torch.full(
                (len(input_ids), self.losses.shape[1]), 1 / self.losses.shape[1]
            )
            self.weights = self.weights.to(self.losses)
            return
        keys = prompt_keys(self.embeddings[0], input_ids, attention_mask, self.answers)
        near = (keys @ self.keys.T).topk(min(self.neighbours, len(self.keys)), dim=1).indices
        score = self.losses[near].mean(1)  # [batch, K]: each adapter's loss on the neighbours
        self.weights = torch.softmax(-score / self.temperature, dim=1)


def prompt_keys(
    embeddings: nn.Embedding, ids: torch.Tensor, mask: torch.Tensor | None, answers: list[list[int]]
) -> torch.Tensor:
    """Unit-norm mean input embedding of each row's prompt. A causal LM's rows end with the
    answer being scored (teacher forcing): it is cut off, or the key would carry the label."""
    mask = torch.ones_like(ids) if mask is None else mask.clone()
    for row in range(len(ids)):
        kept = ids[row][mask[row].bool()].tolist()
        for answer in answers:
            if len(answer) < len(kept) and kept[-len(answer) :] == answer:
                last = mask[row].nonzero().max().item()
                mask[row, last - len(answer) + 1 : last + 1] = 0
                break
    vectors = embeddings(ids).float() * mask[..., None]
    mean = vectors.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return F.normalize(mean, dim=-1)


def answer_suffixes(rec: backbone.Recommender) -> list[list[int]]:
    """The token rows a causal LM's inputs end with when an answer is scored (none for seq2seq,
    whose answers go to the decoder)."""
    if rec.seq2seq:
        return []
    return [row.tolist() for row in token_ids(rec, [YES, NO], "answer")]


@torch.no_grad()
def sample_keys(
    rec: backbone.Recommender, samples: list[Sample], batch_size: int = 64
) -> torch.Tensor:
    """[len(samples), d] prompt keys, as the router computes them when a sample is scored."""
    out = []
    embeddings = rec.model.get_input_embeddings()
    device = embeddings.weight.device
    for start in range(0, len(samples), batch_size):
        batch = encode(rec, samples[start : start + batch_size])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        out.append(prompt_keys(embeddings, ids, mask, answer_suffixes(rec)).cpu())
    width = embeddings.weight.shape[1]
    return torch.cat(out) if out else torch.zeros((0, width))


def _input_stack(model: nn.Module) -> nn.Module:
    """The module called with the prompt's ids: T5's encoder, a causal LM's decoder stack."""
    if backbone.is_seq2seq(model.config):
        return model.get_encoder()
    return getattr(model, model.base_model_prefix)


def attach(
    rec: backbone.Recommender,
    adapters: list[dict[str, torch.Tensor]],
    scalings: list[float],
    pool: dict,
    neighbours: int,
    temperature: float,
) -> Router:
    """Make `rec.model` (the frozen backbone) an APA model: every layer the adapters adapt mixes
    them, with the weights routed from each batch's prompts."""
    model = rec.model.requires_grad_(False)
    if len(set(scalings)) != 1:
        raise ValueError(
            f"the shard adapters differ in LoRA scaling ({scalings}); train them alike"
        )
    router = Router(
        model.get_input_embeddings(),
        pool,
        neighbours,
        temperature,
        answer_suffixes(rec),
        rec.tokenizer.pad_token_id,
    )
    for name in sorted({k.split(".lora_")[0] for k in adapters[0]}):
        parent, _, leaf = name.removeprefix("base_model.model.").rpartition(".")
        holder = model.get_submodule(parent)
        down = torch.stack([a[f"{name}.lora_A.weight"] for a in adapters])
        up = torch.stack([a[f"{name}.lora_B.weight"] for a in adapters])
        setattr(holder, leaf, MixedLinear(getattr(holder, leaf), down, up, scalings[0], router))
    # On the module the hook runs on, so that a deep copy (E2URec's augmented model) routes its
    # own copy of the router, the one its layers read.
    stack = _input_stack(model)
    stack.apa_router = router
    stack.register_forward_pre_hook(_route, with_kwargs=True)
    return router


def _route(stack, args, kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        raise ValueError("an APA model routes by the prompt's token ids; it got embeddings")
    stack.apa_router.route(ids, kwargs.get("attention_mask"))


def save_apa(out: str | Path, base: str, shards: list[str | Path], pool: dict, **info) -> None:
    """The folder `out` of an APA model over `shards` (adapter folders) and its pool."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"keys": pool["keys"].contiguous(), "losses": pool["losses"].contiguous()}
    save_file(tensors, out / POOL, metadata={"samples": json.dumps(pool["samples"])})
    meta = {
        "kind": "apa",
        "base": backbone._relative(base, out),
        "shards": [os.path.relpath(Path(s).resolve(), out.resolve()) for s in shards],
        **info,
    }
    (out / backbone.META).write_text(json.dumps(meta, indent=2) + "\n")


def read_pool(path: str | Path) -> dict:
    from safetensors import safe_open

    file = Path(path) / POOL
    with safe_open(file, "pt") as fh:
        samples = json.loads(fh.metadata()["samples"])
    return {**load_file(file), "samples": samples}


def assemble_apa(path: str, meta: dict, base: backbone.Recommender) -> backbone.Recommender:
    """The APA model in folder `path` on its loaded backbone."""
    adapters, scalings = [], []
    for shard in meta["shards"]:
        folder = Path(backbone.resolve(path, shard))
        adapters.append(load_file(folder / ADAPTER))
        config = json.loads((folder / "adapter_config.json").read_text())
        scalings.append(config["lora_alpha"] / config["r"])
    attach(base, adapters, scalings, read_pool(path), meta["neighbours"], meta["temperature"])
    return backbone.wrap(backbone.to_device(base.model), base.tokenizer, path, base.answers)


def pool_arrays(keys: torch.Tensor, columns: list[np.ndarray], samples: list) -> dict:
    """A pool as saved: its keys, each adapter's loss per pool sample, the samples' keys
    (user, item, time), so that a deletion finds its users' rows."""
    return {
        "keys": keys.float(),
        "losses": torch.from_numpy(np.stack(columns, axis=1).astype(np.float32)),
        "samples": [list(k) for k in samples],
    }
