"""Frozen teachers: their answer-position logits, cached once per sample where memory allows."""

from __future__ import annotations

import torch

from e2urec.data.sample import Sample
from e2urec.model.backbone import Recommender
from e2urec.model.scoring import encode, forward


class Teacher:
    """Answer logits of a frozen `model` for `samples` (by index), computed once if they fit."""

    def __init__(
        self,
        rec: Recommender,
        model: torch.nn.Module,
        samples: list[Sample],
        cache_mb: float,
        batch_size: int = 32,
        answers: list[str] | None = None,
    ):
        if torch.cuda.is_available():
            model = model.cuda()
        self.rec, self.model, self.samples, self.answers = rec, model.eval(), samples, answers
        for p in model.parameters():
            p.requires_grad_(False)
        self.cache: list[torch.Tensor] | None = None
        rows = 3 * len(samples)  # answers are "Yes." / "No.": about 3 tokens each
        if rows * len(rec.tokenizer) * 4 / 2**20 <= cache_mb:
            self.cache = self._compute(list(range(len(samples))), batch_size)
            self.model = None  # cached: the teacher's weights can go

    @property
    def cached(self) -> bool:
        return self.cache is not None

    @torch.no_grad()
    def _compute(self, idx: list[int], batch_size: int) -> list[torch.Tensor]:
        device = next(self.model.parameters()).device
        per_sample = []
        for i in range(0, len(idx), batch_size):
            chunk = idx[i : i + batch_size]
            answers = [self.answers[j] for j in chunk] if self.answers else None
            batch = encode(self.rec, [self.samples[j] for j in chunk], answers)
            out = forward(self.rec, self.model, {k: v.to(device) for k, v in batch.items()})
            per_sample += list(out.logits.float().cpu().split(out.sizes))
        return per_sample

    def logits(self, idx: list[int], device: torch.device) -> torch.Tensor:
        """[N, vocab] rows in the same order as `forward` gives them for these samples."""
        if self.cache is not None:
            return torch.cat([self.cache[j] for j in idx]).to(device)
        return torch.cat(self._compute(idx, len(idx))).to(device)
