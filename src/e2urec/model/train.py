"""Fine-tune a backbone into the recommender (LLMRec): `e2urec train`, and Retrain on retain."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm import tqdm

from e2urec.config import check_training
from e2urec.data.sample import Sample
from e2urec.model import backbone
from e2urec.model.lora import add_lora
from e2urec.model.scoring import encode, forward
from e2urec.resources import PeakMemory


@dataclass
class TrainConfig:
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    eval_batch_size: int = 64
    lora: bool = False  # LoRA (rank/alpha/dropout below) instead of full fine-tuning
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 0

    def __post_init__(self):
        check_training(self.epochs, self.lr, self.batch_size)
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be at least 1, got {self.eval_batch_size}")


def answer_loss(rec: backbone.Recommender, model, samples: list[Sample], answers=None):
    """Cross-entropy on the answer tokens ("Yes." / "No." and end of sequence)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encode(rec, samples, answers).items()}
    out = forward(rec, model, batch)
    return torch.nn.functional.cross_entropy(out.logits.float(), out.targets), out


def shuffled_batches(items: list, size: int, seed: int) -> list[list]:
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [[items[i] for i in order[j : j + size]] for j in range(0, len(order), size)]


def fit(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, object], torch.Tensor],
    epoch_batches: Callable[[int], Iterable],
    epochs: int,
    lr: float,
    desc: str,
    after_epoch: Callable[[torch.nn.Module, int], None] | None = None,
) -> torch.nn.Module:
    """The one optimisation loop: AdamW over trainable parameters, via accelerate."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    for epoch in range(epochs):
        model.train()
        # Each process takes every n-th batch: `accelerate launch` splits the work across GPUs.
        mine = list(epoch_batches(epoch))[accelerator.process_index :: accelerator.num_processes]
        bar = tqdm(mine, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False)
        for batch in bar:
            optimizer.zero_grad()
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss.item()} in epoch {epoch + 1}")
            accelerator.backward(loss)
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if after_epoch:
            after_epoch(accelerator.unwrap_model(model), epoch)
    return accelerator.unwrap_model(model)


def train(
    model: str | Path,
    train_samples: list[Sample],
    valid_samples: list[Sample],
    out: str | Path,
    config: TrainConfig | None = None,
) -> dict:
    """Fine-tune `model` on `train_samples`, keep the epoch with the best valid loss in `out`."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    rec = backbone.load(model)
    net = (
        add_lora(rec.model, config.lora_rank, config.lora_alpha, config.lora_dropout)
        if config.lora
        else rec.model
    )
    if torch.cuda.is_available():
        net = net.cuda()
    best = {"valid_loss": float("inf"), "epoch": 0}
    history = []

    def validate(trained, epoch):
        loss = mean_loss(rec, trained, valid_samples, config.eval_batch_size)
        history.append({"epoch": epoch + 1, "valid_loss": loss})
        if loss < best["valid_loss"]:
            best.update(valid_loss=loss, epoch=epoch + 1)
            backbone.save(
                rec,
                trained,
                out,
                base=str(model) if config.lora else None,
                trained_on=len(train_samples),
                config=asdict(config),
            )

    start = time.perf_counter()
    with PeakMemory() as peak:
        fit(
            net,
            lambda m, b: answer_loss(rec, m, b)[0],
            lambda epoch: shuffled_batches(train_samples, config.batch_size, config.seed + epoch),
            config.epochs,
            config.lr,
            desc=f"train {Path(out).name}",
            after_epoch=validate,
        )
    report = {
        "seconds": time.perf_counter() - start,
        "trainable_params": backbone.count_parameters(net),
        "peak_rss_mb": peak.mb,
        "best_epoch": best["epoch"],
        "history": history,
        "config": asdict(config),
    }
    (Path(out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


@torch.no_grad()
def mean_loss(rec, model, samples: list[Sample], batch_size: int) -> float:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        loss, _ = answer_loss(rec, model, chunk)
        total += loss.item() * len(chunk)
        count += len(chunk)
    model.train(was)
    return total / max(1, count)
