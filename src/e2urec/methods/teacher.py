"""Frozen teachers: their answer distributions for the samples training draws, computed once
and kept compact.

Each answer row keeps the teacher's most likely tokens, as few as reach 1 - TAIL of the
probability and at most `cap` of them, as int32 ids with float32 log-probabilities, plus the
log of the mass left over: one bucket for every other token. KL(teacher || student) is then
taken between the two distributions coarsened to those tokens plus the bucket; it is below the
exact KL by the teacher's bucket mass times the KL inside the bucket. `cap` comes from the
memory budget (`cache_mb`): as many entries per row as the budget holds for every row, so a
small problem (the demo: ~1,000 samples, 4,000-token vocabulary) keeps whole rows and is exact,
and a large one is coarsened only as far as it must.

Size at the paper's scale: 100,000 samples x 60% = 60,000 train samples, 3 answer rows each
("Yes"/"No", ".", end) = 180,000 rows; even if every one is cached (SCRUB's retain teacher sees
all of retain), a 2,048 MB budget gives each row 2,048 MiB / (180,000 x 8 B) = 1,491 entries:
the cache stays within 2 GB by construction. Full float32 rows of T5's 32,128-token
vocabulary would take 180,000 x 32,128 x 4 B = 23 GB.

What is distilled (a method's `target`): "vocabulary", the whole vocabulary at every answer row
("Yes"/"No", ".", end), or "yes_no", the two answer classes (No, Yes) at the first answer row,
where the recommender's answer is read: one exact two-entry row a sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2urec.data.sample import Sample
from e2urec.maths import kl_rows
from e2urec.model.backbone import Recommender, to_device
from e2urec.model.backbone import device as backbone_device
from e2urec.model.scoring import AnswerLogits, autocast, by_length, encode, first_rows, forward

TAIL = 1e-4  # teacher mass a row may leave to the bucket without needing more entries
MIN_CAP = 64  # below this many entries per row a teacher is not cached
BUDGET_MB = 2048  # for a method's teachers together (the methods' `cache_mb` default)
ROWS_PER_SAMPLE = 3
BYTES_PER_ENTRY = 8  # int32 id + float32 log-probability
LOG_TAIL = math.log(TAIL) + 1e-6
TARGETS = ("vocabulary", "yes_no")


def check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def target_rows(rec: Recommender, logits: torch.Tensor, sizes, target: str) -> torch.Tensor:
    """The rows of `target` among answer `logits` (forward's order, `sizes` rows a sample)."""
    if target == "vocabulary":
        return logits
    sizes = torch.as_tensor(sizes, device=logits.device)
    return logits[first_rows(sizes)][:, [rec.no_id, rec.yes_id]]


def student_rows(rec: Recommender, out: AnswerLogits, target: str) -> torch.Tensor:
    return target_rows(rec, out.logits, out.sizes, target)


def row_cap(samples: int, cache_mb: float) -> float:
    """Entries each row may keep so that `samples` fit in `cache_mb` even if every row is full."""
    return cache_mb * 2**20 / (max(1, samples) * ROWS_PER_SAMPLE * BYTES_PER_ENTRY)


def fits(samples: int, cache_mb: float) -> bool:
    return row_cap(samples, cache_mb) >= MIN_CAP


@dataclass
class Compact:
    ids: torch.Tensor  # [rows, k] int32 token ids
    logp: torch.Tensor  # [rows, k] float32 log-probabilities, -inf where a row keeps fewer
    rest: torch.Tensor  # [rows] float32 log of the mass of every other token

    @staticmethod
    def cat(parts: list[Compact]) -> Compact:
        width = max(p.ids.shape[1] for p in parts)

        def pad(t, value):
            return F.pad(t, (0, width - t.shape[1]), value=value)

        return Compact(
            torch.cat([pad(p.ids, 0) for p in parts]),
            torch.cat([pad(p.logp, float("-inf")) for p in parts]),
            torch.cat([p.rest for p in parts]),
        )

    def to(self, device) -> Compact:
        return Compact(self.ids.to(device), self.logp.to(device), self.rest.to(device))


def compress(logits: torch.Tensor, temperature: float = 1.0, cap: float = 1024) -> Compact:
    """The compact form of softmax(logits / temperature), at most `cap` entries a row."""
    # float64: over 49,152 tokens float32 probabilities sum to 1 + 1e-5, a tenth of TAIL, so
    # rows that kept 1 - TAIL counted as inexact; and a float32 running sum stalls on a tail of
    # many tokens below half an ulp of ~1, so such a row was kept whole.
    logp = F.log_softmax(logits.double() / temperature, dim=-1)
    top, ids = logp.topk(int(min(cap, logp.shape[-1])), dim=-1)
    keep = ((top.exp().cumsum(-1) < 1 - TAIL).sum(-1) + 1).clamp(max=top.shape[-1])
    k = int(keep.max())
    top, ids = top[:, :k].clone(), ids[:, :k]
    top[torch.arange(k, device=top.device)[None] >= keep[:, None]] = float("-inf")
    rest = _rest(logp, ids, torch.isfinite(top))
    return Compact(ids.int().cpu(), top.float().cpu(), rest.float().cpu())


def _rest(logp: torch.Tensor, ids: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """log of the mass of every token not among `ids` where `kept`, summed in log space (no
    1 - sum cancellation); -inf for a row that keeps every token. Entries not kept (padding, a
    row that stopped early) stay in the bucket whatever their id."""
    inside = torch.zeros_like(logp).scatter_add(-1, ids.long(), kept.to(logp.dtype)) > 0
    whole = inside.all(-1, keepdim=True)
    # A whole row sums its own (finite) tokens and is then set to -inf: logsumexp over only
    # -inf would give NaN gradients.
    rest = torch.logsumexp(logp.masked_fill(inside & ~whole, float("-inf")), dim=-1)
    return rest.masked_fill(whole.squeeze(-1), float("-inf"))


def compact_kl(teacher: Compact, student_logits: torch.Tensor, temperature: float = 1.0):
    """Per row KL(teacher || student) over the teacher's kept tokens plus the bucket."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    valid = torch.isfinite(teacher.logp)
    s_top = s.gather(-1, teacher.ids.long())
    head = torch.where(valid, teacher.logp.exp() * (teacher.logp - s_top), 0.0).sum(-1)
    s_rest = _rest(s, teacher.ids, valid)
    has_rest = torch.isfinite(teacher.rest)
    tail = torch.where(has_rest, teacher.rest.exp() * (teacher.rest - s_rest), 0.0)
    return head + tail


def model_outputs(
    rec: Recommender, model: torch.nn.Module, run: Callable | None = None
) -> Callable[[dict], torch.Tensor]:
    """A frozen model's answer logits for an encoded batch; `run(model, batch)` in place of
    `scoring.forward` (e.g. a frozen bottom's, for a batch of its states: model/frozen.py)."""
    model = to_device(model)
    model.eval().requires_grad_(False)
    run = run or (lambda model, batch: forward(rec, model, batch))
    return lambda batch: run(model, batch).logits


def exactness(*teachers: Teacher) -> dict:
    """For a report: rows whose cached distribution was coarsened, and of those the rows that
    are computed exactly at each use instead (the rest enter the KL coarsened)."""
    return {
        "inexact_rows": sum(t.inexact_rows for t in teachers),
        "recomputed_rows": sum(t.recomputed_rows for t in teachers),
    }


class Teacher:
    """A frozen teacher's answers for samples[i], i in `idx` (the ones training draws).

    `outputs(batch)` gives the teacher's answer logits. They are computed once, in batches of
    similar length, and kept compact (at `temperature`) within `cache_mb`. With `fallback`
    (the teacher has weights of its own), it is computed again at every use instead when
    fewer than MIN_CAP entries a row fit or a row would leave more than TAIL of its mass to
    the bucket (a near-uniform, randomly initialised teacher), so its KL stays exact. Without
    (its weights are the student's, about to change), it is always cached; `inexact_rows`
    counts rows that left more than TAIL to the bucket, and `recompute` can hand it a frozen
    copy that computes those samples exactly at each use. `target`: the rows distilled."""

    def __init__(
        self,
        rec: Recommender,
        outputs: Callable[[dict], torch.Tensor],
        samples: list[Sample],
        idx: Iterable[int],
        temperature: float = 1.0,
        cache_mb: float = 2048,
        batch_size: int = 32,
        answers: list[str] | None = None,
        fallback: bool = False,
        target: str = "vocabulary",
        inputs: Callable[[list[Sample], list[str] | None], dict] | None = None,
    ):
        check_target(target)
        self.rec, self.outputs, self.samples, self.answers = rec, outputs, samples, answers
        # What `outputs` reads: `encode`'s batch, or e.g. a frozen bottom's states (model/frozen.py).
        self.inputs = inputs or (lambda chunk, answers: encode(rec, chunk, answers))
        self.temperature, self.target = temperature, target
        self.cache: dict[int, Compact] | None = None
        self.inexact_rows = 0
        self.recomputed_rows = 0  # of the inexact ones, rows computed exactly at each use instead
        self.live: set[int] = set()  # cached samples computed again at each use (`recompute`)
        idx = sorted(set(idx))
        cap = max(row_cap(len(idx), cache_mb), MIN_CAP)  # MIN_CAP: when it must be cached
        if fits(len(idx), cache_mb) or not fallback:  # without fallback it must be cached
            self.cache = {}
            order = by_length(rec, [samples[i] for i in idx])
            for start in range(0, len(order), batch_size):
                chunk = [idx[j] for j in order[start : start + batch_size]]
                logits, sizes = self._run(chunk)
                for i, rows in zip(chunk, logits.split(sizes)):
                    self.cache[i] = compress(rows, temperature, cap)
            self.inexact_rows = sum(int((c.rest > LOG_TAIL).sum()) for c in self.cache.values())
            if fallback and self.inexact_rows:
                self.cache, self.recomputed_rows = None, self.inexact_rows
            else:
                self.outputs = None  # cached: the teacher's weights can go

    @property
    def cached(self) -> bool:
        return self.cache is not None

    def entries(self) -> int:
        """Entries kept over all cached rows (each BYTES_PER_ENTRY bytes)."""
        return sum(c.ids.numel() for c in (self.cache or {}).values())

    def recompute(self, outputs: Callable[[dict], torch.Tensor]) -> None:
        """From now on, compute the samples with coarsened cached rows exactly at each use, with
        `outputs` (a frozen copy of the teacher): their KL is then exact, not a lower bound."""
        self.outputs = outputs
        for i, c in list((self.cache or {}).items()):
            if (c.rest > LOG_TAIL).any():
                self.live.add(i)
                del self.cache[i]
        self.recomputed_rows = self.inexact_rows

    @torch.no_grad()
    def _run(self, idx: list[int]) -> tuple[torch.Tensor, list[int]]:
        answers = [self.answers[j] for j in idx] if self.answers else None
        batch = self.inputs([self.samples[j] for j in idx], answers)
        device = backbone_device()
        with autocast(device):
            logits = self.outputs({k: v.to(device) for k, v in batch.items()}).float()
        sizes = (batch["labels"] != -100).sum(1).tolist()
        rows = target_rows(self.rec, logits, sizes, self.target)
        return rows, sizes if self.target == "vocabulary" else [1] * len(idx)

    def kl(self, idx: list[int], student: torch.Tensor | AnswerLogits) -> torch.Tensor:
        """Per row of the target, KL(teacher || student) for samples `idx`, in `forward`'s order;
        `student`: its forward output, or the target's rows of it."""
        if isinstance(student, AnswerLogits):
            student = student_rows(self.rec, student, self.target)
        if self.cache is None:
            logits, _ = self._run(idx)
            return kl_rows(logits.to(student.device), student, self.temperature)
        if self.live.isdisjoint(idx):
            target = Compact.cat([self.cache[i] for i in idx]).to(student.device)
            return compact_kl(target, student, self.temperature)
        return self._mixed_kl(idx, student)

    def _mixed_kl(self, idx: list[int], student: torch.Tensor) -> torch.Tensor:
        """`kl` where some of `idx` are cached and some are computed again (`recompute`)."""
        device, t = student.device, self.temperature
        live = [i for i in idx if i in self.live]
        kept = [i for i in idx if i not in self.live]
        logits, live_sizes = self._run(live)
        sizes = {i: len(self.cache[i].rest) for i in kept} | dict(zip(live, live_sizes))
        starts = dict(zip(idx, itertools.accumulate([0] + [sizes[i] for i in idx])))

        def rows(group):  # where each sample's rows lie in `student`
            return [r for i in group for r in range(starts[i], starts[i] + sizes[i])]

        values = [kl_rows(logits.to(device), student[rows(live)], t)]
        if kept:
            target = Compact.cat([self.cache[i] for i in kept]).to(device)
            values.append(compact_kl(target, student[rows(kept)], t))
        where = torch.tensor(rows(live) + rows(kept), device=device)
        return torch.zeros(len(student), device=device).index_put((where,), torch.cat(values))
