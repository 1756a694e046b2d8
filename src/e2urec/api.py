"""Library functions behind the `train` and `unlearn` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from e2urec.config import from_dict
from e2urec.data import load_splits
from e2urec.methods import Task, get_method
from e2urec.metrics import classification
from e2urec.model import backbone, score
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import TrainConfig, train


def evaluate(model: str | Path, samples, batch_size: int = 64) -> dict:
    rec = backbone.load(model)
    p = score(rec, samples, batch_size)["p_yes"]
    return classification(np.array([s.label for s in samples]), p)


def train_recommender(data, out, model: str = "tiny", split: str = "train", options=None) -> dict:
    """Fine-tune `model` on a prepared split; "tiny" first builds the embedded T5 in out/base."""
    options = dict(options or {})
    tiny = from_dict(TinyT5, options.pop("tiny", {}), "tiny")
    config = from_dict(TrainConfig, options, "train")
    splits = load_splits(data)
    if model == "tiny":
        model = str(Path(out) / "base")
        build_tiny_t5([s.input for s in splits["train"]], model, tiny)
    report = train(model, splits[split], splits["valid"], out, config)
    report["test"] = evaluate(out, splits["test"], config.eval_batch_size)
    report["base"] = str(model)
    (Path(out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def unlearn(data, model, out, method: str = "e2urec", options=None) -> dict:
    """Apply `method` to the trained recommender `model` for the prepared forget set."""
    splits = load_splits(data)
    report = _train_report(model)
    task = Task(
        str(model),
        splits["retain"],
        splits["forget"],
        splits["valid"],
        Path(out),
        base=report.get("base"),
        train_config=from_dict(TrainConfig, report.get("config"), "train"),
    )
    result = get_method(method, options).unlearn(task)
    summary = {
        "method": method,
        "model": result.model,
        "seconds": round(result.seconds, 2),
        "forget": evaluate(result.model, splits["forget"]),
        "test": evaluate(result.model, splits["test"]),
    }
    (Path(out) / "unlearn_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _train_report(model) -> dict:
    path = Path(model) / "train_report.json"
    return json.loads(path.read_text()) if path.exists() else {}
