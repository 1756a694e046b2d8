"""Library functions behind the `train`, `unlearn` and `forget` commands (bench/ times requests
with `forget`). What judges the models they make is evals/ (`evaluate` is imported here for the
reports these functions write)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from e2urec.config import from_dict
from e2urec.data import load_splits, template_texts
from e2urec.data.deletion import DeletionRequest, sample_key, select
from e2urec.data.manifest import check_interactions, read_answers
from e2urec.evals.scorecard import evaluate, judged
from e2urec.methods import Task, get_method
from e2urec.model import backbone, loader
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import TrainConfig, processes, train
from e2urec.weights import check_weights


def train_recommender(
    data, out, model: str = "tiny", split: str = "train", options=None, base=None
) -> dict:
    """Fine-tune `model` on a prepared split; "tiny" first builds the embedded T5 in out/base.
    `base`: the base of `model` when it is a PEFT adapter made elsewhere (`loader.load`)."""
    options = dict(options or {})
    tiny = from_dict(TinyT5, options.pop("tiny", {}), "tiny")
    config = from_dict(TrainConfig, options, "train")
    loader.check_base(model, base)
    splits = load_splits(data)
    answers = read_answers(data)
    readable(model)
    group = processes()  # under `accelerate launch` only the main process writes
    if model == "tiny":
        model = str(Path(out) / "base")
        if group.is_main_process:
            build_tiny_t5(template_texts(data), model, tiny, answers)
        group.wait_for_everyone()
    report = train(model, splits[split], splits["valid"], out, config, answers=answers, base=base)
    if group.is_main_process:
        report["test"] = evaluate(out, splits["test"], config.eval_batch_size)
        report["base"] = str(model)
        (Path(out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def unlearn(data, model, out, method: str = "e2urec", options=None, base=None) -> dict:
    """Apply `method` to the trained recommender `model` for the prepared forget set. `base`:
    the base of `model` when it is a PEFT adapter made elsewhere (`loader.load`)."""
    loader.check_base(model, base)
    splits = load_splits(data)
    readable(model)
    report = _train_report(model)
    task = Task(
        str(model),
        splits["retain"],
        splits["forget"],
        splits["valid"],
        Path(out),
        base=report.get("base") or base,
        train_config=from_dict(TrainConfig, report.get("config"), "train"),
        answers=read_answers(data),
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


def readable(model) -> None:
    """Refuse, naming the file, a model folder (or its adapter's base) whose weights are cut
    short: the loader would stop with a traceback that names no file."""
    folder, seen = Path(model), set()
    while folder.is_dir() and folder.resolve() not in seen:
        seen.add(folder.resolve())
        check_weights(folder)
        meta = backbone.read_meta(folder)
        if meta.get("kind") != "lora":
            return
        folder = Path(backbone.resolve(folder, meta["base"]))


def _train_report(model) -> dict:
    path = Path(model) / "train_report.json"
    return json.loads(path.read_text()) if path.exists() else {}


FORGET_REPORT = "forget_report.json"


def lineage(model, base=None) -> dict:
    """Where `model` comes from: its backbone (for an adapter made elsewhere, `base`), training
    config, and what earlier deletion requests (made with `forget`) already removed from its
    training data."""
    earlier = Path(model) / FORGET_REPORT
    if earlier.exists():
        report = json.loads(earlier.read_text())
        return {k: report[k] for k in ("base", "train_config", "removed_keys", "requests")}
    report = _train_report(model)
    recorded = report.get("base")
    return {
        "base": backbone.resolve(model, recorded) if recorded else base,
        "train_config": report.get("config"),
        "removed_keys": [],
        "requests": [],
    }


def forget(
    data,
    model,
    out,
    method: str = "e2urec",
    users=(),
    interactions=(),
    options=None,
    history: bool = True,
    evaluate: bool = True,
    base=None,
) -> dict:
    """Apply one deletion request to the trained recommender `model` with `method`.

    Forget = the train samples of `users` and of the (user, item) `interactions` (with
    `history`, also prompts showing a deleted rating); retain = train minus those and minus
    what earlier requests on `model` removed. Ids not in the training data are refused
    before anything is written. Writes the new model and `forget_report.json` to `out`.

    `latency` in the report: seconds of unlearning and of the whole request (reading the data
    to saving the new model). With `evaluate`, the models before and after are then compared:
    each model's test and attack numbers are computed once and kept beside it (evals/scorecard.py),
    so only the forgotten samples are scored for the request. `base`: the base of `model` when
    it is a PEFT adapter made elsewhere (`loader.load`).
    """
    start = time.perf_counter()
    out = Path(out)
    loader.check_base(model, base)
    splits = load_splits(data)
    readable(model)
    request = DeletionRequest(tuple(users), tuple(tuple(p) for p in interactions))
    if request.interactions:
        check_interactions(data)
    past = lineage(model, base)
    chosen = select(splits["train"], request, map(tuple, past["removed_keys"]), history)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; give a new folder for the new model")
    unlearner = get_method(method, options)
    task = Task(
        str(model),
        chosen.retain,
        chosen.forget,
        splits["valid"],
        out,
        base=past["base"],
        train_config=from_dict(TrainConfig, past["train_config"], "train"),
        answers=read_answers(data),
    )
    result = unlearner.unlearn(task)
    latency = {
        "unlearning_seconds": round(result.seconds, 3),
        "request_seconds": round(time.perf_counter() - start, 3),
    }
    compared = {}
    if evaluate:
        began = time.perf_counter()
        after = judged(result.model, splits["test"], chosen.forget, chosen.retain)
        original = loader.load(model, base=past["base"], answers=task.answers)
        was = judged(original, splits["test"], chosen.forget, chosen.retain)
        compared = {**after, "before": was}
        latency["evaluation_seconds"] = round(time.perf_counter() - began, 3)
    report = {
        "method": method,
        "model": result.model,
        "from": str(model),
        "request": request.to_dict(),
        "removed": {
            "samples": len(chosen.forget),
            "targets": chosen.targets,
            "history": chosen.history,
            "users": chosen.users,
        },
        "counts": {
            "train": len(splits["train"]),
            "retain": len(chosen.retain),
            "removed_before": len(past["removed_keys"]),
        },
        **compared,
        "seconds": round(result.seconds, 2),
        "latency": latency,
        "trainable_params": result.trainable_params,
        "base": past["base"],
        "train_config": asdict(task.train_config),
        "removed_keys": past["removed_keys"] + [list(sample_key(s)) for s in chosen.forget],
        "requests": past["requests"] + [request.to_dict()],
    }
    (out / FORGET_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report
