"""Bad-T, as the E2URec paper's code calls it: train the forget set on flipped answers.

Full tuning of the original; loss = CE(retain) + weight * CE(forget with Yes/No swapped) on paired
batches. Defaults from the paper's script: lr 5e-5, batch 16, weight 0.2; its checkpoint is the
one after 2,400 paired steps (`steps`, about 3.0 epochs of ML-1M's forget set: the paper preset).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2urec.data.sample import NO, YES
from e2urec.methods.base import LossMethod, Pair, StepsConfig
from e2urec.model.train import answer_loss


@dataclass
class BadTConfig(StepsConfig):
    lr: float = 5e-5
    weight: float = 0.2  # of the flipped forget term

    def __post_init__(self):
        super().__post_init__()
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


class BadT(LossMethod):
    name = "bad_t"
    Config = BadTConfig

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        retain, _ = answer_loss(self.rec, model, batch.retain)
        flipped = [NO if s.output == YES else YES for s in batch.forget]
        forget, _ = answer_loss(self.rec, model, batch.forget, flipped)
        return retain + self.config.weight * forget
