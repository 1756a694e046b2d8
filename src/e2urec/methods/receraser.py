"""RecEraser (Chen et al., 2022): shards by user, aggregated by a learned attention.

Users (not samples) are dealt into `shards` shards balanced by sample count, so all of a user's
data sits in one shard; each shard trains a model as in SISA. The shards' answers are combined by
an attention over their last hidden states (model/ensemble.py), trained on the retain set with
the shards frozen. A deletion request retrains the shards that held forgotten users and then
the attention; Result.seconds is that work alone. (RecEraser groups similar users by k-means on
pretrained embeddings; here the grouping is a seeded random balanced one.)

Shards trained on their top layers from the stored bottom states (`top_layers`) share the
backbone's bottom: the attention then trains on the shards' top layers run from those states.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from e2urec.data.sample import Sample
from e2urec.methods.base import Task, frozen_bottom
from e2urec.methods.sisa import Sisa, SisaConfig
from e2urec.model import backbone, loader
from e2urec.model.ensemble import Ensemble, ShardAttention
from e2urec.model.train import answer_ce, answer_loss, fit, shuffled_batches


@dataclass
class RecEraserConfig(SisaConfig):
    """epochs / lr / batch_size train the attention on the retain set (the paper trains it on
    training data; valid holds forgotten users' later prompts, which show their ratings)."""

    epochs: int = 1
    lr: float = 1e-3
    attention_size: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.attention_size < 1:
            raise ValueError(f"attention_size must be at least 1, got {self.attention_size}")


def balanced_homes(counts: Counter, shards: int, seed: int) -> dict[str, int]:
    """Users, largest first (ties in seeded order), each to the shard with fewest samples."""
    users = random.Random(seed).sample(sorted(counts), len(counts))
    users.sort(key=lambda u: -counts[u])
    load, home = [0] * shards, {}
    for user in users:
        home[user] = load.index(min(load))
        load[home[user]] += counts[user]
    return home


class RecEraser(Sisa):
    name = "receraser"
    Config = RecEraserConfig

    def partition(self, samples: list[Sample]) -> list[list[int]]:
        counts = Counter(s.user for s in samples)
        home = balanced_homes(counts, self.config.shards, self.config.seed)
        shards: list[list[int]] = [[] for _ in range(self.config.shards)]
        for i, s in enumerate(samples):
            shards[home[s.user]].append(i)
        return shards

    def aggregate(self, task: Task, shard_dirs: list[str]) -> ShardAttention:
        c = self.config
        members = [loader.load(d) for d in shard_dirs]
        hidden = members[0].model.config.hidden_size
        ensemble = Ensemble(
            [m.model for m in members], ShardAttention(len(members), hidden, c.attention_size)
        )
        ensemble.shards.requires_grad_(False)
        ensemble = backbone.to_device(ensemble)
        rec = backbone.wrap(ensemble, members[0].tokenizer, str(task.out), members[0].answers)
        # Shards on the backbone's stored bottom: each runs its top layers from the states.
        states = frozen_bottom(task, members[0], task.retain, c.batch_size, shard_dirs)
        tokens = task.train_config.loss_tokens  # as the shards were trained

        def loss(model, samples):
            if states is None:
                return answer_loss(rec, model, samples, tokens=tokens)[0]
            device = next(model.parameters()).device
            batch = {k: v.to(device) for k, v in states.inputs(samples).items()}
            return answer_ce(states.run(model, batch, ensemble.shards), tokens)

        fit(
            ensemble,
            loss,
            lambda e: shuffled_batches(task.retain, c.batch_size, c.seed + e),
            c.epochs,
            c.lr,
            desc="receraser attention",
        )
        return ensemble.attention.cpu()
