"""Bad-T, as the E2URec paper's code calls it: train the forget set on flipped answers.

Full tuning of the original; loss = CE(retain) + weight * CE(forget with Yes/No swapped) on paired
batches. Defaults from the paper's script: lr 5e-5, batch 16, weight 0.2; its checkpoint is the
one after 2,400 paired steps (`steps`, about 3.0 epochs of ML-1M's forget set: the paper preset).
On an original tuned on its top layers from the stored bottom states (`top_layers`), those layers
are tuned in full from the states (methods/base.py LossMethod); the states of the forget samples
with their flipped answers, which nothing stored, are computed once before tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from e2urec.data.sample import NO, YES
from e2urec.methods.base import ForgetTermConfig, LossMethod, Pair, Task
from e2urec.model import backbone


@dataclass
class BadTConfig(ForgetTermConfig):
    """`weight`: of the flipped forget term."""


class BadT(LossMethod):
    name = "bad_t"
    Config = BadTConfig

    def prepare(self, task: Task, rec: backbone.Recommender) -> dict:
        if self.states is None:
            return {}
        # The answer tokens are part of the input: the flipped rows have states of their own.
        computed = self.states.fill(
            rec.model, task.forget, self.config.batch_size, flip(task.forget)
        )
        return {"flipped_states_computed": computed}

    def loss(self, model, batch: Pair, epoch: int) -> torch.Tensor:
        retain, _ = self._pass(model, batch.retain, self.tokens)
        forget, _ = self._pass(model, batch.forget, self.tokens, flip(batch.forget))
        return retain + self.config.weight * forget


def flip(samples: list) -> list[str]:
    """Each sample's answer swapped: Yes for No, No for Yes."""
    return [NO if s.output == YES else YES for s in samples]
