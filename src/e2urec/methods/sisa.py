"""SISA (Bourtoule et al., 2021): one model per shard of the training data, logits averaged.

The train set (retain + forget) is cut into `shards` random shards by sample, as the paper's code
does; each shard trains a model from the backbone with the recommender's own TrainConfig. A
deletion request retrains only the shards that held forgotten samples, on what they keep.
Result.seconds is that retraining alone. A shard that holds forgotten samples would be trained
and then thrown away, its model never reaching the output, so it is trained once, on its kept
data: the ensemble is the same and the run is shorter.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace

from e2urec.data.sample import Sample
from e2urec.methods.base import Method, MethodConfig, Task
from e2urec.model.ensemble import ShardAttention, save_ensemble
from e2urec.model.train import train


@dataclass
class SisaConfig(MethodConfig):
    """Shards train with the task's TrainConfig; epochs/lr/batch_size here are RecEraser's."""

    shards: int = 4
    shard_epochs: int | None = None  # None: the recommender's own training epochs

    def __post_init__(self):
        super().__post_init__()
        if self.shards < 2:
            raise ValueError(f"shards must be at least 2 (one shard is Retrain), got {self.shards}")
        if self.shard_epochs is not None and self.shard_epochs < 1:
            raise ValueError(f"shard_epochs must be at least 1, got {self.shard_epochs}")


class Sisa(Method):
    name = "sisa"
    Config = SisaConfig
    needs_original = False

    def partition(self, samples: list[Sample]) -> list[list[int]]:
        """Sample indices per shard: a seeded shuffle dealt round the shards."""
        order = random.Random(self.config.seed).sample(range(len(samples)), len(samples))
        return [order[s :: self.config.shards] for s in range(self.config.shards)]

    def aggregate(self, task: Task, shard_dirs: list[str]) -> ShardAttention | None:
        """The learned part of the aggregation (none: SISA averages)."""
        return None

    def run(self, task: Task) -> tuple[str, int, dict]:
        if task.base is None:
            raise ValueError(f"{self.name} trains shards from the backbone: it needs task.base")
        samples = task.retain + task.forget
        gone = set(range(len(task.retain), len(samples)))
        shards = self.partition(samples)
        affected = [s for s, idx in enumerate(shards) if gone.intersection(idx)]
        start = time.perf_counter()
        models = {
            s: self._train_shard(task, s, [samples[i] for i in idx])
            for s, idx in enumerate(shards)
            if s not in affected
        }
        before = time.perf_counter() - start
        start = time.perf_counter()  # the deletion request arrives
        for s in affected:
            kept = [samples[i] for i in shards[s] if i not in gone]
            if kept:  # a shard left empty drops out of the ensemble
                models[s] = self._train_shard(task, s, kept)
        if not models:
            raise ValueError("every shard held only forgotten samples: nothing is left to train")
        dirs = [models[s][0] for s in sorted(models)]
        attention = self.aggregate(task, dirs)
        unlearning = time.perf_counter() - start
        params = sum(models[s][1] for s in affected if s in models)
        if attention is not None:
            params += sum(p.numel() for p in attention.parameters())
        save_ensemble(task.out, dirs, attention, method=self.name, config=asdict(self.config))
        info = {
            "unlearning_seconds": unlearning,
            "kept_shards_seconds": before,
            "retrained_shards": affected,
            "shard_sizes": [len(idx) for idx in shards],
            "epochs_run": {s: models[s][2] for s in sorted(models)},
        }
        return str(task.out), params, info

    def _train_shard(self, task: Task, shard: int, samples: list[Sample]) -> tuple[str, int, int]:
        base = task.train_config
        epochs = self.config.shard_epochs or base.epochs
        config = replace(base, epochs=epochs, seed=base.seed + shard)
        out = task.out / f"shard_{shard}"
        stored = {"bottom_cache": task.bottom_cache} if task.bottom_cache else {}
        valid = task.retained_valid()
        report = train(task.base, samples, valid, out, config, answers=task.answers, **stored)
        return str(out), report["trainable_params"], report["epochs_run"]
