"""Fine-tune a backbone into the recommender (LLMRec): `e2urec train`, and Retrain on retain."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

from e2urec.config import check_lora, check_training
from e2urec.data.sample import Sample
from e2urec.memory import PeakMemory
from e2urec.metrics import scored_classification
from e2urec.model import backbone, loader
from e2urec.model.frozen import BottomStates, add_top_lora, split
from e2urec.model.lora import add_lora
from e2urec.model.scoring import (
    AnswerLogits,
    autocast,
    by_length,
    encode,
    forward,
    forward_samples,
    lengths,
    yes_log_odds,
    yes_probability,
)

WINDOW = 50  # batches sorted by length together; the batches themselves are then shuffled
SCHEDULES = ("constant", "linear")
# "all": every answer token ("Yes", ".", end of sequence); "decision": the Yes/No token alone.
LOSS_TOKENS = ("all", "decision")
# What picks the epoch kept and stops training: the valid loss (on `loss_tokens`) or valid AUC.
SELECT_BY = ("loss", "auc")
BOTTOM_DTYPES = ("float16", "bfloat16")


@dataclass
class TrainConfig:
    epochs: int = 10  # the most; training stops once the valid loss stops improving
    patience: int = 1  # epochs without a better valid loss before training stops
    lr: float = 1e-3
    batch_size: int = 16
    eval_batch_size: int = 64
    lora: bool = False  # LoRA (rank/alpha/dropout below) instead of full fine-tuning
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "linear": the lr falls to 0 over `epochs` (early stopping may end training sooner)
    schedule: str = "constant"
    # Share of the schedule's steps (`epochs` x batches) over which the lr rises from 0 to `lr`.
    warmup: float = 0.0
    # A pretrained LLM learns the format tokens in a few steps; their loss then says nothing.
    loss_tokens: str = "all"
    select_by: str = "loss"
    # L > 0 (LoRA on a causal LM): adapters on the top L layers only, trained from the frozen
    # bottom's hidden states, computed once per sample and stored in `bottom_dtype`.
    top_layers: int = 0
    bottom_dtype: str = "float16"
    seed: int = 0

    def __post_init__(self):
        check_training(self.epochs, self.lr, self.batch_size)
        check_lora(self.lora_rank, self.lora_alpha, self.lora_dropout)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.loss_tokens not in LOSS_TOKENS:
            raise ValueError(f"loss_tokens must be one of {LOSS_TOKENS}, got {self.loss_tokens!r}")
        if self.select_by not in SELECT_BY:
            raise ValueError(f"select_by must be one of {SELECT_BY}, got {self.select_by!r}")
        if self.top_layers < 0 or (self.top_layers and not self.lora):
            raise ValueError(
                f"top_layers needs lora: true and L >= 1 (0: all), got {self.top_layers}"
            )
        if self.bottom_dtype not in BOTTOM_DTYPES:
            raise ValueError(
                f"bottom_dtype must be one of {BOTTOM_DTYPES}, got {self.bottom_dtype!r}"
            )
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a share of the steps in [0, 1), got {self.warmup}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {self.patience}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")


def answer_loss(
    rec: backbone.Recommender, model, samples: list[Sample], answers=None, tokens: str = "all"
):
    """Cross-entropy on the answer tokens ("Yes." / "No." and end of sequence), or with
    `tokens="decision"` on each sample's first answer token (Yes / No) alone."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encode(rec, samples, answers).items()}
    out = forward(rec, model, batch)
    return answer_ce(out, tokens), out


def answer_ce(out: AnswerLogits, tokens: str = "all") -> torch.Tensor:
    if tokens == "decision":
        return torch.nn.functional.cross_entropy(out.answer().float(), out.targets[out.first])
    return torch.nn.functional.cross_entropy(out.logits.float(), out.targets)


def shuffled_batches(items: list, size: int, seed: int, sizes: list[int] | None = None) -> list:
    """Seeded random batches of `items`; with `sizes` (token lengths), batches of similar length.

    Bucketing: a random order is cut into windows of WINDOW batches, each window sorted by
    length and cut into batches, and the batches are shuffled, so which samples meet in a batch
    and the order of batches stay random while padding shrinks."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=generator).tolist()
    if sizes is None:
        return [[items[i] for i in order[j : j + size]] for j in range(0, len(order), size)]
    cut = []
    for start in range(0, len(order), size * WINDOW):
        window = sorted(order[start : start + size * WINDOW], key=sizes.__getitem__)
        cut += [window[j : j + size] for j in range(0, len(window), size)]
    shuffled = torch.randperm(len(cut), generator=generator).tolist()
    return [[items[i] for i in cut[b]] for b in shuffled]


def share(batch, rank: int, world: int):
    """This process's part of `batch` and the factor on its loss that makes the processes'
    averaged gradient the gradient of the whole batch's mean loss (exact for equal parts)."""
    if world == 1:
        return batch, 1.0
    mine = batch[rank::world] if isinstance(batch, list) else batch.part(rank, world)
    return mine, len(mine) * world / len(batch)


def processes() -> PartialState:
    """The processes this run trains on. Asked with `cpu` as `fit`'s Accelerator asks: the state
    is built once per process, and without it a CPU run under `accelerate launch` is n lone
    processes, each training on all the data and each writing the output as its main."""
    return PartialState(cpu=not torch.cuda.is_available())


def precision() -> str:
    if not torch.cuda.is_available():
        return "no"  # CPU autocast to bf16 is slower than float32 on most CPUs
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def backward(accelerator: Accelerator, model, loss, factor: float) -> torch.Tensor:
    """Gradients of one batch's loss; its detached value. A loss given as a tuple of callables
    is their sum, computed and backpropagated one term at a time, so that only one term's graph
    is held (E2URec's forget and retain passes)."""
    if not isinstance(loss, tuple):
        accelerator.backward(loss * factor)
        return loss.detach()
    total = torch.zeros((), device=accelerator.device)
    for i, part in enumerate(loss):
        last = i == len(loss) - 1  # gradients are synchronised between processes once
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                term = part()
            accelerator.backward(term * factor)
        total += term.detach()
    return total


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, object], torch.Tensor | tuple],
    epoch_batches: Callable[[int], Iterable],
    epochs: int,
    lr: float,
    desc: str,
    after_epoch: Callable[[torch.nn.Module, int], bool] | None = None,
    schedule: str = "constant",
    warmup: float = 0.0,
) -> torch.nn.Module:
    """The one optimisation loop: AdamW over trainable parameters, via accelerate.

    Under `accelerate launch` every process walks the same batches and takes its share of each,
    so n processes make the same steps as one. `after_epoch` (validation, saving) runs on the
    main process only; when it returns True, every process stops. With `schedule` "linear" the
    lr falls from `lr` to 0 over `epochs` x the first epoch's batches; `warmup` (a share of
    those steps) first raises it linearly from near 0 to `lr`."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    steps = epochs * len(epoch_batches(0)) if schedule == "linear" or warmup else 0
    # Stepped here, once a batch, not through accelerate, which steps a scheduler once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, warmup, steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    quiet = not accelerator.is_main_process
    for epoch in range(epochs):
        model.train()
        total, steps = torch.zeros((), device=accelerator.device), 0
        # An explicit disable=False would override the user's TQDM_DISABLE.
        hidden = {"disable": True} if quiet else {}
        bar = tqdm(epoch_batches(epoch), desc=f"{desc} epoch {epoch + 1}", leave=False, **hidden)
        for batch in bar:
            if len(batch) < world:  # too small to share: every process skips it alike
                continue
            mine, factor = share(batch, rank, world)
            optimizer.zero_grad(set_to_none=True)
            with accelerator.autocast():
                loss = loss_fn(model, mine)
            loss = backward(accelerator, model, loss, factor)
            optimizer.step()
            scheduler.step()
            total += loss  # no host sync per step: the loss is read once an epoch
            steps += 1
        mean = (total / max(1, steps)).item()
        if not math.isfinite(mean):
            raise FloatingPointError(f"{desc}: loss became {mean} in epoch {epoch + 1}")
        stop = bool(after_epoch(accelerator.unwrap_model(model), epoch)) if after_epoch else False
        if world > 1:
            stop = broadcast_object_list([stop])[0]
            accelerator.wait_for_everyone()
        if stop:
            break
    return accelerator.unwrap_model(model)


def lr_factor(schedule: str, warmup: float, steps: int) -> Callable[[int], float]:
    """The lr at optimizer step `step` (from 0) as a factor of the peak lr."""
    horizon = steps if schedule == "linear" else 0
    rise = round(warmup * steps)

    def factor(step: int) -> float:
        if step < rise:
            return (step + 1) / (rise + 1)
        # From the peak down to 0; with no warmup (rise 0) exactly the tiny T5's 1 - step / horizon.
        return max(0.0, 1 - (step - rise) / (horizon - rise)) if horizon else 1.0

    return factor


def train(
    model: str | Path,
    train_samples: list[Sample],
    valid_samples: list[Sample],
    out: str | Path,
    config: TrainConfig | None = None,
    bottom_cache: str | Path | None = None,
    answers: tuple[str, str] | None = None,
    base: str | None = None,
) -> dict:
    """Fine-tune `model` on `train_samples` until the valid loss (or AUC, `select_by`) has not
    improved for `patience` epochs (at most `epochs`); the best epoch is kept in `out`.
    With `config.top_layers`, the frozen bottom's states are read from `bottom_cache` (a file)
    when it exists, and the ones computed here are added to it. `answers` and `base` are
    `loader.load`'s: the data's answer words, and the base of an adapter made elsewhere."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    rec = loader.load(model, base=base, answers=answers)
    state = processes()
    lora = (config.lora_rank, config.lora_alpha, config.lora_dropout)
    if config.top_layers:
        net = add_top_lora(rec.model, config.top_layers, *lora)
        states = BottomStates(rec, split(net, config.top_layers), config.bottom_dtype)
        if bottom_cache is not None and Path(bottom_cache).is_file():
            states.load(bottom_cache)
        added = states.fill(net, train_samples + valid_samples, config.eval_batch_size)
        if added and bottom_cache is not None and state.is_main_process:
            states.save(bottom_cache)
    else:
        net, states = add_lora(rec.model, *lora) if config.lora else rec.model, None
    main = state.is_main_process
    best = {"value": float("inf"), "epoch": 0}
    history = []

    def validate(trained, epoch) -> bool:
        if not main:
            return False
        metrics = valid_metrics(rec, trained, valid_samples, config, states)
        record = {"epoch": epoch + 1, **metrics}
        history.append(record)
        # Lower is better for the kept value: the valid loss, or minus the valid AUC.
        value = -record["valid_auc"] if config.select_by == "auc" else record["valid_loss"]
        if value < best["value"]:
            best.update(value=value, epoch=epoch + 1)
            backbone.save(
                rec,
                trained,
                out,
                base=str(model) if config.lora else None,
                trained_on=len(train_samples),
                config=asdict(config),
            )
        return epoch + 1 - best["epoch"] >= config.patience

    sizes = lengths(rec, train_samples)
    start, cpu = time.perf_counter(), time.process_time()
    with PeakMemory() as peak:
        fit(
            net,
            lambda m, b: (
                answer_ce(states.forward(m, b), config.loss_tokens)
                if states
                else answer_loss(rec, m, b, tokens=config.loss_tokens)[0]
            ),
            lambda e: shuffled_batches(train_samples, config.batch_size, config.seed + e, sizes),
            config.epochs,
            config.lr,
            desc=f"train {Path(out).name}",
            after_epoch=validate,
            schedule=config.schedule,
            warmup=config.warmup,
        )
    report = {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "trainable_params": backbone.count_parameters(net),
        "peak_rss_mb": peak.mb,
        "peak_gpu_mb": peak.gpu_mb,
        "processes": state.num_processes,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "history": history,
        "config": asdict(config),
    }
    if main:
        (Path(out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def valid_metrics(
    rec, model, samples: list[Sample], config: TrainConfig, states: BottomStates | None = None
) -> dict:
    """The valid loss on `config.loss_tokens`, and (unless the loss alone selects over all answer
    tokens, the tiny T5's default) the valid AUC, both from one pass (from `states` if given)."""
    if config.loss_tokens == "all" and config.select_by == "loss" and states is None:
        return {"valid_loss": mean_loss(rec, model, samples, config.eval_batch_size)}
    passed = answer_pass(rec, model, samples, config.eval_batch_size, states)
    auc = scored_classification(samples, passed)["auc"]
    if config.select_by == "auc" and not np.isfinite(auc):
        raise ValueError("select_by='auc' needs valid samples of both answers (Yes. and No.)")
    decision = float(passed["decision_loss"].mean())
    loss = decision if config.loss_tokens == "decision" else passed["loss"]
    return {"valid_auc": auc, "valid_decision_loss": decision, "valid_loss": loss}


@torch.no_grad()
def answer_pass(rec, model, samples: list[Sample], batch_size: int, states=None) -> dict:
    """P(Yes) and the decision token's loss per sample, and the mean answer loss as `mean_loss`
    computes it, in batches of similar length; from the frozen bottom's `states` if given."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    order = by_length(rec, samples)
    p_yes, log_odds, decision, total = [], [], [], 0.0
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        with autocast(device):
            out = forward_samples(rec, model, chunk, states)
        answer = out.answer().float()
        p_yes.append(yes_probability(rec, answer))
        log_odds.append(yes_log_odds(rec, answer))
        decision.append(F.cross_entropy(answer, out.targets[out.first], reduction="none"))
        total += answer_ce(out).item() * len(chunk)
    model.train(was)
    back = torch.from_numpy(np.argsort(np.asarray(order, dtype=np.int64)))
    return {
        "p_yes": torch.cat(p_yes).cpu()[back].numpy(),
        "log_odds": torch.cat(log_odds).cpu()[back].numpy(),  # what the AUC ranks by
        "decision_loss": torch.cat(decision).cpu()[back].numpy(),
        "loss": total / max(1, len(samples)),
    }


@torch.no_grad()
def mean_loss(rec, model, samples: list[Sample], batch_size: int) -> float:
    """Mean answer loss per sample, in batches of similar length."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    order = by_length(rec, samples)
    total = torch.zeros((), device=device)
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        with autocast(device):
            loss, _ = answer_loss(rec, model, chunk)
        total += loss.float() * len(chunk)
    model.train(was)
    return total.item() / max(1, len(samples))
