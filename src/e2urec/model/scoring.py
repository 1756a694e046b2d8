"""The one Yes/No scoring path, shared by training, unlearning and evaluation.

`forward` runs a model on prompts with their answers (teacher forcing) and returns the logits
at every answer-token position, flattened in row-major order, plus the row of each sample's
first answer token: that position is where P(Yes) = softmax(logit_yes, logit_no) is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from e2urec.data.sample import Sample
from e2urec.model.backbone import Recommender

MAX_LENGTH = 512


@dataclass
class AnswerLogits:
    logits: torch.Tensor  # [N, vocab]: one row per answer token
    targets: torch.Tensor  # [N]: the answer token ids
    first: torch.Tensor  # [B]: row in `logits` of each sample's first answer token
    sizes: list[int]  # answer tokens per sample (for caching per sample)

    def answer(self) -> torch.Tensor:
        return self.logits[self.first]


def encode(rec: Recommender, samples: list[Sample], answers: list[str] | None = None) -> dict:
    """Tokenise prompts with answers; `answers` overrides the samples' own (e.g. flipped)."""
    answers = answers or [s.output for s in samples]
    tok = rec.tokenizer
    prompts = [s.input for s in samples]
    if rec.seq2seq:
        enc = tok(
            prompts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        lab = tok(answers, padding=True, return_tensors="pt")
        labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }
    return _encode_causal(rec, prompts, answers)


def _encode_causal(rec: Recommender, prompts: list[str], answers: list[str]) -> dict:
    tok = rec.tokenizer
    rows, label_rows = [], []
    for prompt, answer in zip(prompts, answers):
        p = tok(prompt, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        a = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p + a)
        label_rows.append([-100] * len(p) + a)
    width = max(map(len, rows))
    # Left padding keeps every prompt's end, and so its answer, at the same place in the batch.
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, label_rows)):
        ids[i, width - len(r) :] = torch.tensor(r)
        labels[i, width - len(r) :] = torch.tensor(lab)
        mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}


def forward(rec: Recommender, model: torch.nn.Module, batch: dict) -> AnswerLogits:
    """Logits at the answer positions of `batch` (from `encode`), for `model` on `rec`'s backbone."""
    labels = batch["labels"]
    if rec.seq2seq:
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels
        )
        logits, keep = out.logits, labels != -100
    else:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        # Logits only from the position before the earliest answer token on: with left padding
        # that is the last few positions, which spares a [batch, length, vocab] tensor (49,152
        # wide for SmolLM2) and its gradient. A causal LM predicts token t from position t-1.
        width = labels.shape[1]
        first_label = int((labels != -100).int().argmax(1).min())
        tail = min(width, width - first_label + 1)
        logits = model(**inputs, logits_to_keep=tail).logits[:, :-1]
        labels = labels[:, width - tail + 1 :]
        keep = labels != -100
    sizes = keep.sum(1)
    first = torch.cumsum(sizes, 0) - sizes
    return AnswerLogits(logits[keep], labels[keep], first, sizes.tolist())


def yes_probability(rec: Recommender, answer_logits: torch.Tensor) -> torch.Tensor:
    pair = answer_logits[:, [rec.no_id, rec.yes_id]].float()
    return torch.softmax(pair, dim=-1)[:, 1]


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def score(
    rec: Recommender,
    samples: list[Sample],
    batch_size: int = 32,
    model: torch.nn.Module | None = None,
    full: bool = False,
    desc: str = "scoring",
) -> dict[str, np.ndarray]:
    """P(Yes) per sample; with `full`, also the vocabulary distribution at the answer position."""
    model = model or rec.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    p_yes, dists, loss = [], [], []
    for chunk in tqdm(list(batches(samples, batch_size)), desc=desc, leave=False):
        batch = {k: v.to(device) for k, v in encode(rec, chunk).items()}
        out = forward(rec, model, batch)
        answer = out.answer()
        p_yes.append(yes_probability(rec, answer).cpu())
        ce = torch.nn.functional.cross_entropy(
            answer.float(), out.targets[out.first], reduction="none"
        )
        loss.append(ce.cpu())
        if full:
            dists.append(torch.softmax(answer.float(), dim=-1).cpu())
    model.train(was_training)
    result = {"p_yes": torch.cat(p_yes).numpy(), "loss": torch.cat(loss).numpy()}
    if full:
        result["dist"] = torch.cat(dists).numpy()
    return result
