"""Bad Teacher (Chundawat et al., 2023): a competent and an incompetent teacher.

The student (full tuning of the original) matches the original on retain samples and a randomly
initialised model of the same architecture on forget samples: KL(teacher || student) over the
rows of both halves of each paired batch, at `temperature` (no T^2 factor, as in their code).
Their teachers are classifiers, so the KL is, by default (`target` "yes_no"), over the two
classes: the (No, Yes) logits at each sample's first answer token, where the recommender's
answer is read. `target` "vocabulary" distils the whole vocabulary at every answer row instead,
from cached teachers (methods/teacher.py); the report's `inexact_rows` counts their coarsened
rows, `recomputed_rows` those computed exactly instead (a teacher with weights of its own).

On an original tuned on its top layers from the stored bottom states (`top_layers`), the student
tunes those layers in full from the states (methods/base.py LossMethod) and both teachers run
from them too: the competent one is the original, and the incompetent one is randomly
initialised above the states (its top layers, final norm and head) on the student's bottom,
the one part of the model the student cannot move.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from e2urec.maths import kl_div
from e2urec.methods.base import LossMethod, MethodConfig, Pair, Task
from e2urec.methods.teacher import (
    BUDGET_MB,
    Teacher,
    check_target,
    exactness,
    fits,
    model_outputs,
)
from e2urec.model import backbone
from e2urec.model.frozen import BottomStates
from e2urec.model.scoring import by_length, encode, forward


@dataclass
class BadTeacherConfig(MethodConfig):
    epochs: int = 1
    lr: float = 1e-4
    temperature: float = 1.0
    target: str = "yes_no"  # or "vocabulary": the whole vocabulary at every answer row

    def __post_init__(self):
        super().__post_init__()
        check_target(self.target)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


class BadTeacher(LossMethod):
    name = "bad_teacher"
    Config = BadTeacherConfig

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        # Two logits a sample: both teachers are computed once, before the student moves.
        forget_idx, retain_idx = self.drawn(task, range(self.config.epochs))
        # Built, not loaded: placed beside the original so its logits are not computed on a CPU.
        incompetent = backbone.to_device(random_model(rec.model))
        if self.config.target == "vocabulary":
            return self._vocabulary_teachers(task, rec, incompetent, forget_idx, retain_idx)
        self.good = class_logits(rec, rec.model, task.retain, retain_idx, self.states)
        self.bad = class_logits(rec, incompetent, task.forget, forget_idx, self.states)
        return {}

    def _vocabulary_teachers(self, task, rec, incompetent, forget_idx, retain_idx) -> dict:
        t, half = self.config.temperature, BUDGET_MB / 2
        shared = fits(len(retain_idx), half)  # else the original needs a copy that stays put
        args = {"temperature": t, "cache_mb": half, **self._inputs()}
        good = model_outputs(rec, rec.model if shared else copy.deepcopy(rec.model), self._run)
        self.good = Teacher(rec, good, task.retain, retain_idx, fallback=not shared, **args)
        bad = model_outputs(rec, incompetent, self._run)
        self.bad = Teacher(rec, bad, task.forget, forget_idx, fallback=True, **args)
        return exactness(self.good, self.bad)

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        _, retain = self._pass(model, batch.retain)
        _, forget = self._pass(model, batch.forget)
        if self.config.target == "vocabulary":
            rows = [self.good.kl(batch.retain_idx, retain), self.bad.kl(batch.forget_idx, forget)]
            return torch.cat(rows).mean()
        device = retain.logits.device
        teacher = torch.stack(
            [self.good[i] for i in batch.retain_idx] + [self.bad[i] for i in batch.forget_idx]
        ).to(device)
        student = torch.cat([self._classes(retain), self._classes(forget)])
        return kl_div(teacher, student, self.config.temperature)

    def _classes(self, out) -> torch.Tensor:
        return out.answer()[:, [self.rec.no_id, self.rec.yes_id]]


def random_model(model: torch.nn.Module) -> torch.nn.Module:
    """A randomly initialised model of `model`'s architecture: the incompetent teacher."""
    return type(model)(copy.deepcopy(model.config))


@torch.no_grad()
def class_logits(
    rec, model, samples, idx, states: BottomStates | None = None, batch_size: int = 32
) -> dict[int, torch.Tensor]:
    """samples[i] -> its (No, Yes) logits at the first answer token, for i in `idx`; from the
    stored bottom `states` if given."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    idx = sorted(set(idx))
    order = [idx[j] for j in by_length(rec, [samples[i] for i in idx])]
    found = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if states is not None:
            out = states.forward(model, [samples[i] for i in chunk])
        else:
            batch = {k: v.to(device) for k, v in encode(rec, [samples[i] for i in chunk]).items()}
            out = forward(rec, model, batch)
        pairs = out.answer()[:, [rec.no_id, rec.yes_id]].float().cpu()
        found.update(zip(chunk, pairs))
    model.train(was)
    return found
