"""E2URec (Wang et al., 2024): LoRA on the frozen original, taught by two teachers.

Forgetting teacher on forget data: orig - alpha * relu(aug - orig), where aug is the original
tuned further on the forget set. Remembering teacher on retain data: the original itself.
Loss = weight * (CE_retain + KL(orig || student)_retain) + (1 - weight) * KL(forget teacher ||
student)_forget; the first `forget_epochs` epochs use the forget term alone.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from e2urec.functional import forgetting_teacher, kl_div
from e2urec.methods.base import LossMethod, MethodConfig, Pair, Task, paired_batches
from e2urec.methods.teacher import Teacher
from e2urec.model import backbone
from e2urec.model.lora import add_lora
from e2urec.model.scoring import encode, forward
from e2urec.model.train import answer_loss, fit


@dataclass
class E2URecConfig(MethodConfig):
    epochs: int = 3
    lr: float = 5e-4
    alpha: float = 2.0  # strength of the push away from what the forget data taught
    weight: float = 0.6  # retain terms vs. forget term
    forget_epochs: int = 1  # epochs with the forget term only
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    aug_mode: str = "lora"  # how the augmented model is tuned: "lora" or "full" (paper's code)
    aug_epochs: int = 1
    aug_lr: float = 5e-4
    cache_mb: float = 2048  # teacher outputs are cached when they fit in this much memory

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.weight <= 1:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.aug_mode not in ("lora", "full"):
            raise ValueError(f"aug_mode must be 'lora' or 'full', got {self.aug_mode!r}")
        if not 0 <= self.forget_epochs <= self.epochs:
            raise ValueError("forget_epochs must be between 0 and epochs")


class E2URec(LossMethod):
    name = "e2urec"
    Config = E2URecConfig
    lora = True

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        c = self.config
        augmented = self._augment(task, rec)
        self.aug = Teacher(rec, augmented, task.forget, c.cache_mb)
        frozen = copy.deepcopy(rec.model)
        self.orig_forget = Teacher(rec, frozen, task.forget, c.cache_mb)
        self.orig_retain = Teacher(rec, frozen, task.retain, c.cache_mb)
        return {"teachers_cached": self.aug.cached and self.orig_retain.cached}

    def _augment(self, task: Task, rec: backbone.Recommender) -> torch.nn.Module:
        """The original tuned further on the forget set: it shows what that data teaches."""
        c = self.config
        model = copy.deepcopy(rec.model)
        if c.aug_mode == "lora":
            model = add_lora(model, c.lora_rank, c.lora_alpha, c.lora_dropout)
        else:
            model.requires_grad_(True)  # a merged LoRA recommender loads frozen
        if torch.cuda.is_available():
            model = model.cuda()
        fit(
            model,
            lambda m, b: answer_loss(rec, m, b.forget)[0],
            lambda e: paired_batches(task, c.batch_size, c.seed + 1000 + e),
            c.aug_epochs,
            c.aug_lr,
            desc="e2urec augmented",
        )
        return model.merge_and_unload() if c.aug_mode == "lora" else model

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        c = self.config
        forget_term = self._forget_kl(model, batch)
        if epoch < c.forget_epochs or not batch.retain:
            return forget_term
        ce, out = answer_loss(self.rec, model, batch.retain)
        remember = self.orig_retain.logits(batch.retain_idx, out.logits.device)
        retain_term = ce + kl_div(remember, out.logits)
        return c.weight * retain_term + (1 - c.weight) * forget_term

    def _forget_kl(self, model, batch: Pair) -> torch.Tensor:
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in encode(self.rec, batch.forget).items()}
        student = forward(self.rec, model, enc).logits
        target = forgetting_teacher(
            self.orig_forget.logits(batch.forget_idx, device),
            self.aug.logits(batch.forget_idx, device),
            self.config.alpha,
        )
        return kl_div(target, student)
