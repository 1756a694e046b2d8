"""Bad Teacher (Chundawat et al., 2023): a competent and an incompetent teacher.

The student (full tuning of the original) matches the original on retain samples and a randomly
initialised model of the same architecture on forget samples: KL(teacher || student) over the
rows of both halves of each paired batch, at `temperature` (no T^2 factor, as in their code).
Their teachers are classifiers, so the KL is over the two classes: the (No, Yes) logits at each
sample's first answer token, where the recommender's answer is read.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from e2urec.functional import kl_div
from e2urec.methods.base import LossMethod, MethodConfig, Pair, Task
from e2urec.methods.teacher import Teacher
from e2urec.model import backbone
from e2urec.model.train import answer_loss


@dataclass
class BadTeacherConfig(MethodConfig):
    epochs: int = 1
    lr: float = 1e-4
    temperature: float = 1.0
    cache_mb: float = 2048  # teacher outputs are cached when they fit in this much memory

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class BadTeacher(LossMethod):
    name = "bad_teacher"
    Config = BadTeacherConfig

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        c = self.config
        incompetent = type(rec.model)(copy.deepcopy(rec.model.config))
        self.good = Teacher(rec, copy.deepcopy(rec.model), task.retain, c.cache_mb)
        self.bad = Teacher(rec, incompetent, task.forget, c.cache_mb)
        return {"teachers_cached": self.good.cached and self.bad.cached}

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        _, retain = answer_loss(self.rec, model, batch.retain)
        _, forget = answer_loss(self.rec, model, batch.forget)
        device = retain.logits.device
        # Teachers give rows in the order `forward` does, so the student's `first` finds theirs.
        teacher = torch.cat(
            [
                self._classes(self.good.logits(batch.retain_idx, device), retain.first),
                self._classes(self.bad.logits(batch.forget_idx, device), forget.first),
            ]
        )
        student = torch.cat(
            [self._classes(retain.logits, retain.first), self._classes(forget.logits, forget.first)]
        )
        return kl_div(teacher, student, self.config.temperature)

    def _classes(self, rows: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """[B, 2]: the (No, Yes) logits at each sample's first answer token."""
        return rows[first][:, [self.rec.no_id, self.rec.yes_id]]
