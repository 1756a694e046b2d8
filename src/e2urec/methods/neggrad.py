"""NegGrad (gradient ascent on forget, descent on retain), as the E2URec paper's code runs it.

Full tuning of the original; loss = CE(retain) - weight * CE(forget) on paired batches. Defaults
from the paper's script: lr 5e-5, batch 16, weight 0.2; its checkpoint is the one after 3,000
paired steps (`steps`, about 3.7 epochs of ML-1M's forget set: the paper preset). On an original
tuned on its top layers from the stored bottom states (`top_layers`), those layers are tuned in
full from the states (methods/base.py LossMethod).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2urec.methods.base import ForgetTermConfig, LossMethod, Pair


@dataclass
class NegGradConfig(ForgetTermConfig):
    """`weight`: of the ascent on the forget set."""


class NegGrad(LossMethod):
    name = "neggrad"
    Config = NegGradConfig

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        retain, _ = self._pass(model, batch.retain, self.tokens)
        forget, _ = self._pass(model, batch.forget, self.tokens)
        return retain - self.config.weight * forget
