"""Bad Teacher (Chundawat et al., 2023): a competent and an incompetent teacher.

The student (full tuning of the original) matches the original on retain samples and a randomly
initialised model of the same architecture on forget samples: KL(teacher || student) over the
rows of both halves of each paired batch, at `temperature` (no T^2 factor, as in their code).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from e2urec.methods.base import LossMethod, MethodConfig, Pair, Task
from e2urec.methods.teacher import Teacher, fits, model_outputs
from e2urec.model import backbone
from e2urec.model.train import answer_loss


@dataclass
class BadTeacherConfig(MethodConfig):
    epochs: int = 1
    lr: float = 1e-4
    temperature: float = 1.0
    cache_mb: float = 2048  # per teacher: memory for its compact outputs (methods/teacher.py)

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class BadTeacher(LossMethod):
    name = "bad_teacher"
    Config = BadTeacherConfig

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        c = self.config
        forget_idx, retain_idx = self.drawn(task, range(c.epochs))
        incompetent = model_outputs(rec, type(rec.model)(copy.deepcopy(rec.model.config)))
        # Cached before the student (the original itself) moves; a copy only if it cannot be.
        shared = fits(len(retain_idx), c.cache_mb)
        good = model_outputs(rec, rec.model if shared else copy.deepcopy(rec.model))
        args = {"temperature": c.temperature, "cache_mb": c.cache_mb}
        self.good = Teacher(rec, good, task.retain, retain_idx, **args, fallback=not shared)
        # A random teacher is near uniform: compact rows would lose mass, so it may run live.
        self.bad = Teacher(rec, incompetent, task.forget, forget_idx, **args, fallback=True)
        return {"teachers_cached": self.good.cached and self.bad.cached}

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        _, retain = answer_loss(self.rec, model, batch.retain)
        _, forget = answer_loss(self.rec, model, batch.forget)
        rows = torch.cat(
            [
                self.good.kl(batch.retain_idx, retain.logits),
                self.bad.kl(batch.forget_idx, forget.logits),
            ]
        )
        return rows.mean()
