"""E2URec (Wang et al., 2024): LoRA on the frozen original, taught by two teachers.

Forgetting teacher on forget data: orig - alpha * relu(aug - orig), where aug is the original
tuned further on the forget set. Remembering teacher on retain data: the original itself.
Both the augmented model's loss and CE_retain are on the answer tokens the original was trained
on (`loss_tokens`). An original tuned on its top layers from stored bottom states
(`top_layers`) gets its unlearning adapters on those layers, and every pass runs from the states.
Loss = weight * (CE_retain + KL(orig || student)_retain) + (1 - weight) * KL(forget teacher ||
student)_forget; the first `forget_epochs` epochs use the forget term alone.

One copy of the weights (aug_mode "lora", the default): the augmented model is a second LoRA
adapter on the original, the original's outputs are the same model with adapters disabled, and
the student is a fresh adapter, added once the teachers' outputs are cached (only for the
samples training reads: all of forget, and the retain samples of the epochs that mix the
terms). aug_mode "full" tunes every weight of the augmented model, as the paper's code does
(lr 5e-5, e.g. `aug_lr: 0.00005`); that needs a second copy of the weights while the
teachers are computed, freed before the student trains.

The paper's script counts steps, not epochs: `steps` (the student: 1,000, the first 812 of
them the forget-only epoch) and `aug_steps` (the augmented model: 1,200) are counted on ML-1M's
forget set and scaled to another's size (methods/base.py). `target` (methods/teacher.py): what
is distilled, by default the whole vocabulary at every answer row, as their code does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2urec.config import check_lora
from e2urec.maths import forgetting_teacher
from e2urec.methods.base import LossMethod, Pair, StepsConfig, Task, scaled_steps, step_limited
from e2urec.methods.teacher import BUDGET_MB, Teacher, check_target, exactness
from e2urec.model import backbone
from e2urec.model.frozen import BottomStates, top_indices
from e2urec.model.lora import add_lora, lora_config
from e2urec.model.scoring import first_rows, lengths
from e2urec.model.train import fit, shuffled_batches

AUGMENTED = "augmented"


@dataclass
class E2URecConfig(StepsConfig):
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
    aug_steps: int = 0  # > 0: the augmented model's optimizer steps (scaled), not aug_epochs
    target: str = "vocabulary"  # or "yes_no": the (No, Yes) logits at the first answer token

    def __post_init__(self):
        super().__post_init__()
        check_lora(self.lora_rank, self.lora_alpha, self.lora_dropout)
        if not 0 <= self.weight <= 1:
            raise ValueError(f"weight must be in [0, 1], got {self.weight}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.aug_mode not in ("lora", "full"):
            raise ValueError(f"aug_mode must be 'lora' or 'full', got {self.aug_mode!r}")
        if not 0 <= self.forget_epochs <= self.epochs:
            raise ValueError("forget_epochs must be between 0 and epochs")
        if self.aug_epochs < 1 or self.aug_lr <= 0:
            raise ValueError("aug_epochs must be at least 1 and aug_lr positive")
        if self.aug_steps < 0:
            raise ValueError(f"aug_steps must be >= 0 (0: aug_epochs), got {self.aug_steps}")
        check_target(self.target)


class E2URec(LossMethod):
    name = "e2urec"
    Config = E2URecConfig
    lora = True

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        c = self.config
        shape = (c.lora_rank, c.lora_alpha, c.lora_dropout)
        layers = None  # every layer
        if self.states is not None:
            layers = top_indices(rec.model, task.train_config.top_layers)
        if c.aug_mode == "full":  # every weight tuned: a second copy, dropped once cached
            augmented = copy.deepcopy(rec.model).requires_grad_(True)
            self._tune(task, rec, augmented)
            self.net = add_lora(rec.model, *shape)
        else:
            self.net = add_lora(rec.model, *shape, name=AUGMENTED, layers=layers)
            self._tune(task, rec, self.net)
            augmented = self.net
        self.net.eval()
        augmented.eval()
        losses = {"orig": 0.0, "aug": 0.0, "rows": 0}

        def original(batch):
            with self.net.disable_adapter():
                return self._logits(self.net, batch)

        def target(batch):
            orig, aug = original(batch), self._logits(augmented, batch)
            answer = batch["labels"] != -100
            gold, rows = batch["labels"][answer], slice(None)
            if self.tokens == "decision":  # the losses reported on the rows trained on
                rows = first_rows(answer.sum(1))
            for name, logits in (("orig", orig), ("aug", aug)):
                loss = F.cross_entropy(logits[rows].float(), gold[rows], reduction="sum")
                losses[name] += loss.item()
            losses["rows"] += len(gold[rows])
            return forgetting_teacher(orig, aug, c.alpha)

        # Only the epochs with the retain term read the remembering teacher: with the tuned
        # setting (one forget-only epoch) it is never computed.
        _, retain_idx = self.drawn(task, range(c.forget_epochs, self.schedule(task)[0]))
        # The adapters change below, so these outputs are cached (no fallback), in half of
        # BUDGET_MB each.
        args = {"cache_mb": BUDGET_MB / 2, "target": c.target, **self._inputs()}
        self.forget = Teacher(rec, target, task.forget, range(len(task.forget)), **args)
        self.remember = Teacher(rec, original, task.retain, retain_idx, **args)
        if c.aug_mode == "lora":  # the student: a fresh adapter; the augmented one can go
            self.net.add_adapter("default", lora_config(rec.model, *shape, layers))
            self.net.set_adapter("default")
            self.net.delete_adapter(AUGMENTED)
        rows = max(1, losses["rows"])
        return {
            "aug_forget_loss": losses["aug"] / rows,
            "orig_forget_loss": losses["orig"] / rows,
            "teacher_samples": {"forget": len(task.forget), "retain": len(retain_idx)},
            "teacher_entries": self.forget.entries() + self.remember.entries(),
            "adapted_layers": layers or "all",
            **exactness(self.forget, self.remember),
        }

    def frozen_bottom(self, task: Task, rec: backbone.Recommender) -> BottomStates | None:
        """On an original tuned on its top layers from the stored bottom states (LossMethod),
        E2URec's adapters go on those layers too, and every pass runs the top from the states,
        as the original's training did (benchmarks/RESULTS.md: a full-depth pass made it 2.2x
        Retrain's CPU on the smollm preset). Not with aug_mode "full", which tunes every weight
        of the augmented model."""
        if self.config.aug_mode != "lora":
            return None
        return super().frozen_bottom(task, rec)

    def _tune(self, task: Task, rec: backbone.Recommender, model) -> None:
        """The original tuned further on the forget set: it shows what that data teaches."""
        c = self.config
        sizes = lengths(rec, task.forget)

        def batches(epoch):
            return shuffled_batches(task.forget, c.batch_size, c.seed + 1000 + epoch, sizes)

        epochs = c.aug_epochs
        if c.aug_steps:
            epochs, batches = step_limited(batches, scaled_steps(c.aug_steps, len(task.forget)))
        fit(
            model,
            lambda m, b: self._pass(m, b, self.tokens)[0],
            batches,
            epochs,
            c.aug_lr,
            desc="e2urec augmented",
        )

    def student(self, rec: backbone.Recommender):
        return self.net

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor | tuple:
        c = self.config
        if epoch < c.forget_epochs or not batch.retain:
            return self._forget_kl(model, batch)
        # The two terms as parts that `fit` backpropagates one after the other: the forget
        # pass's graph is freed before the retain pass builds its own (peak memory).
        return (
            lambda: (1 - c.weight) * self._forget_kl(model, batch),
            lambda: c.weight * self._retain_term(model, batch),
        )

    def _retain_term(self, model, batch: Pair) -> torch.Tensor:
        ce, out = self._pass(model, batch.retain, self.tokens)
        return ce + self.remember.kl(batch.retain_idx, out).mean()

    def _forget_kl(self, model, batch: Pair) -> torch.Tensor:
        _, out = self._pass(model, batch.forget)
        return self.forget.kl(batch.forget_idx, out).mean()
