"""The one Yes/No scoring path, shared by training, unlearning and evaluation.

`forward` runs a model on prompts with their answers (teacher forcing) and returns the logits
at every answer-token position, flattened in row-major order, plus the row of each sample's
first answer token: that position is where P(Yes) = softmax(logit_yes, logit_no) is read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from e2urec.data.sample import NO, YES, Sample
from e2urec.model.backbone import Recommender

MAX_LENGTH = 512


@dataclass
class AnswerLogits:
    logits: torch.Tensor  # [N, vocab]: one row per answer token
    targets: torch.Tensor  # [N]: the answer token ids
    first: torch.Tensor  # [B]: row in `logits` of each sample's first answer token
    sizes: torch.Tensor  # [B]: answer tokens per sample (for caching per sample)

    def answer(self) -> torch.Tensor:
        return self.logits[self.first]


def token_ids(rec: Recommender, texts: list[str], kind: str = "prompt") -> list[np.ndarray]:
    """Token ids of prompts (or answers, `kind="answer"`: the labels "Yes."/"No.", in
    `rec.answers`' words), each text tokenised once per run.

    Ids are kept as int32 arrays: 60,000 prompts of ~150 tokens take ~36 MB.
    """
    cache = rec.tokens.setdefault(kind, {})
    missing = [t for t in dict.fromkeys(texts) if t not in cache]
    if missing:
        tok = rec.tokenizer
        # Answers come as the labels "Yes."/"No." and are written in the model's own words.
        words = dict(zip((YES, NO), rec.answers))
        if kind == "prompt":
            rows = tok(missing, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        elif rec.seq2seq:
            rows = tok([words.get(a, a) for a in missing])["input_ids"]
        else:  # a causal LM continues the prompt: " Yes." and then end of sequence
            said = [" " + words.get(a, a) for a in missing]
            rows = tok(said, add_special_tokens=False)["input_ids"]
            rows = [r + [tok.eos_token_id] for r in rows]
        cache.update((t, np.asarray(r, dtype=np.int32)) for t, r in zip(missing, rows))
    return [cache[t] for t in texts]


def lengths(rec: Recommender, samples: list[Sample]) -> list[int]:
    return [len(ids) for ids in token_ids(rec, [s.input for s in samples])]


def by_length(rec: Recommender, samples: list[Sample]) -> list[int]:
    """Indices of `samples`, shortest prompt first: batches of similar length pad little."""
    n = lengths(rec, samples)
    return sorted(range(len(samples)), key=n.__getitem__)


def encode(rec: Recommender, samples: list[Sample], answers: list[str] | None = None) -> dict:
    """Tokenise prompts with answers; `answers` overrides the samples' own (e.g. flipped)."""
    answers = answers or [s.output for s in samples]
    prompts = token_ids(rec, [s.input for s in samples])
    targets = token_ids(rec, answers, "answer")
    if not rec.seq2seq:
        return _encode_causal(rec, prompts, targets)
    ids, mask = _pad(prompts, rec.tokenizer.pad_token_id)
    labels, _ = _pad(targets, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pad(rows: list[np.ndarray], value: int, left: bool = False):
    """Right- (or left-) padded [len(rows), longest] ids and their attention mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.from_numpy(row)
        mask[i, span] = 1
    return ids, mask


def _encode_causal(rec: Recommender, prompts: list, answers: list) -> dict:
    # Left padding keeps every prompt's end, and so its answer, at the same place in the batch.
    rows = [np.concatenate([p, a]) for p, a in zip(prompts, answers)]
    ids, mask = _pad(rows, rec.tokenizer.pad_token_id, left=True)
    hidden = [
        np.concatenate([np.full(len(p), -100, np.int32), a]) for p, a in zip(prompts, answers)
    ]
    labels, _ = _pad(hidden, -100, left=True)
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
        # `inputs_embeds`: the hidden states a frozen bottom left (model/frozen.py), not ids.
        first_input = "inputs_embeds" if "inputs_embeds" in batch else "input_ids"
        inputs = {k: batch[k] for k in (first_input, "attention_mask", "position_ids")}
        # Logits only from the position before the earliest answer token on: with left padding
        # that is the last few positions, which spares a [batch, length, vocab] tensor (49,152
        # wide for SmolLM2) and its gradient. A causal LM predicts token t from position t-1.
        width = labels.shape[1]
        first_label = int((labels != -100).int().argmax(1).min())
        tail = min(width, width - first_label + 1)
        # No cache: nothing is generated here, and Gemma 3 would size one from
        # config.layer_types, which a frozen top run shortens (model/frozen.py) while its layers
        # keep their own indices into it.
        logits = model(**inputs, logits_to_keep=tail, use_cache=False).logits[:, :-1]
        labels = labels[:, width - tail + 1 :]
        keep = labels != -100
    sizes = keep.sum(1)
    return AnswerLogits(logits[keep], labels[keep], first_rows(sizes), sizes)


def first_rows(sizes: torch.Tensor) -> torch.Tensor:
    """Each sample's first answer row among answer rows laid end to end, `sizes` a sample."""
    return torch.cumsum(sizes, 0) - sizes


def yes_probability(rec: Recommender, answer_logits: torch.Tensor) -> torch.Tensor:
    pair = answer_logits[:, [rec.no_id, rec.yes_id]].float()
    return torch.softmax(pair, dim=-1)[:, 1]


def yes_log_odds(rec: Recommender, answer_logits: torch.Tensor) -> torch.Tensor:
    """The Yes-No logit difference in float64: what AUCs rank by, since the float32 two-way
    softmax reaches 1.0 at a gap of ~17 and confident models' P(Yes) tie."""
    return answer_logits[:, rec.yes_id].double() - answer_logits[:, rec.no_id].double()


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def autocast(device: torch.device):
    """bf16 (or fp16) autocast on a GPU that has it; a no-op on CPU, where it would be slower."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def forward_samples(rec: Recommender, model, samples: list[Sample], states=None) -> AnswerLogits:
    """`forward` of `samples`, encoded here; from `states`' stored bottom (model/frozen.py),
    running only the layers above it, when given."""
    if states is not None:
        return states.forward(model, samples)
    device = next(model.parameters()).device
    return forward(rec, model, {k: v.to(device) for k, v in encode(rec, samples).items()})


@torch.no_grad()
def score(
    rec: Recommender,
    samples: list[Sample],
    batch_size: int = 32,
    model: torch.nn.Module | None = None,
    full: bool = False,
    desc: str = "scoring",
    states=None,
) -> dict[str, np.ndarray]:
    """P(Yes), the Yes-No logit difference (float64) and the loss per sample; with `full`, also
    the vocabulary distribution at the answer position. With `states` (model/frozen.py), only
    the layers above the stored bottom run.

    Batches are formed shortest prompt first; results come back in the order of `samples`."""
    model = model or rec.model
    if states is not None:
        states.fill(model, samples, batch_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = by_length(rec, samples)
    p_yes, log_odds, dists, loss = [], [], [], []
    for idx in tqdm(list(batches(order, batch_size)), desc=desc, leave=False):
        chunk = [samples[i] for i in idx]
        with autocast(device):
            out = forward_samples(rec, model, chunk, states)
        answer = out.answer().float()
        p_yes.append(yes_probability(rec, answer))
        log_odds.append(yes_log_odds(rec, answer))
        loss.append(F.cross_entropy(answer, out.targets[out.first], reduction="none"))
        if full:
            dists.append(torch.softmax(answer, dim=-1).cpu())
    model.train(was_training)
    back = torch.from_numpy(np.argsort(np.asarray(order, dtype=np.int64)))
    result = {
        "p_yes": torch.cat(p_yes).cpu()[back].numpy(),
        "loss": torch.cat(loss).cpu()[back].numpy(),
        "log_odds": torch.cat(log_odds).cpu()[back].numpy(),
    }
    if full:
        result["dist"] = torch.cat(dists)[back].numpy()
    return result
