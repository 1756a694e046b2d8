"""SCRUB (Kurmanji et al., 2023): the student moves away from the original on forget data
and stays with it on retain data.

Full tuning of the original. Each epoch is a max pass over the forget set (only in the first
`msteps` epochs): minimise -KL(original || student); then a min pass over the retain set:
ce_weight * CE + kl_weight * KL(original || student). KLs at `temperature`, times T^2 as their
DistillKL. Defaults from their code (gamma 0.99, alpha 0.001, kd_T 4, msteps 2, 3 epochs) with
the paper's fine-tuning lr for AdamW. `target` (methods/teacher.py): what is distilled, by
default the whole vocabulary at every answer row.

The teachers' outputs are cached, coarsened where the budget is short (methods/teacher.py). A
coarsened KL is below the exact one, and the max step would climb that bound (at scale up to
66% of a row's mass in the leftover bucket), so the forget teacher's coarsened samples are
computed exactly at each use by a frozen copy of the original; the report's `inexact_rows`
counts both teachers' coarsened rows, `recomputed_rows` those the max step computes exactly.

On an original tuned on its top layers from the stored bottom states (`top_layers`), the student
tunes those layers in full from the states (methods/base.py LossMethod), and the teacher (the
original, cached or a frozen copy) runs from them too.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch

from e2urec.methods.base import LossMethod, MethodConfig, Pair, Task
from e2urec.methods.teacher import Teacher, check_target, exactness, fits, model_outputs
from e2urec.model import backbone


@dataclass
class ScrubConfig(MethodConfig):
    epochs: int = 3
    lr: float = 5e-5
    msteps: int = 2  # epochs that start with a max pass over the forget set
    ce_weight: float = 0.99  # SCRUB's gamma
    kl_weight: float = 0.001  # SCRUB's alpha
    temperature: float = 4.0
    cache_mb: float = 2048  # per teacher: memory for its compact outputs (methods/teacher.py)
    target: str = "vocabulary"  # or "yes_no": the (No, Yes) logits at the first answer token

    def __post_init__(self):
        super().__post_init__()
        check_target(self.target)
        if not 0 <= self.msteps <= self.epochs:
            raise ValueError(f"msteps must be between 0 and epochs, got {self.msteps}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.ce_weight < 0 or self.kl_weight < 0:
            raise ValueError("ce_weight and kl_weight must be >= 0")


class Scrub(LossMethod):
    name = "scrub"
    Config = ScrubConfig

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        c = self.config
        forget_idx, retain_idx = self.drawn(task, range(c.epochs))
        # Cached before the student (the original itself) moves; a copy only if it cannot be.
        shared = fits(len(forget_idx) + len(retain_idx), c.cache_mb)
        original = model_outputs(rec, rec.model if shared else copy.deepcopy(rec.model), self._run)
        args = {"temperature": c.temperature, "cache_mb": c.cache_mb, "fallback": not shared}
        args.update(target=c.target, **self._inputs())
        self.on_forget = Teacher(rec, original, task.forget, forget_idx, **args)
        self.on_retain = Teacher(rec, original, task.retain, retain_idx, **args)
        if self.on_forget.cached and self.on_forget.inexact_rows:
            # A copy now, before the student moves: still the original.
            self.on_forget.recompute(model_outputs(rec, copy.deepcopy(rec.model), self._run))
        teachers = (self.on_forget, self.on_retain)
        return {"teachers_cached": all(t.cached for t in teachers), **exactness(*teachers)}

    def batches(self, task: Task, epoch: int) -> list[Pair]:
        """Forget-only batches (max steps) in the first msteps epochs, then retain-only ones."""
        rng, size = random.Random(self.config.seed + epoch), self.config.batch_size

        def chunks(n: int) -> list[list[int]]:
            order = rng.sample(range(n), n)
            return [order[i : i + size] for i in range(0, n, size)]

        forget = [Pair([task.forget[j] for j in c], c, [], []) for c in chunks(len(task.forget))]
        retain = [Pair([], [], [task.retain[j] for j in c], c) for c in chunks(len(task.retain))]
        return (forget if epoch < self.config.msteps else []) + retain

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        c = self.config
        if batch.forget:
            _, out = self._pass(model, batch.forget, self.tokens)
            kl = self.on_forget.kl(batch.forget_idx, out).mean()
            return -(c.temperature**2) * kl
        ce, out = self._pass(model, batch.retain, self.tokens)
        kl = c.temperature**2 * self.on_retain.kl(batch.retain_idx, out).mean()
        return c.ce_weight * ce + c.kl_weight * kl
