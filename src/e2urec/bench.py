"""`e2urec bench`: prepare -> original -> each unlearning method -> metrics -> tables."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from e2urec.config import from_dict, load_yaml
from e2urec.data import load_splits, prepare
from e2urec.data.protocol import Protocol
from e2urec.methods import Task, get_method
from e2urec.metrics import classification, closeness
from e2urec.model import backbone, score
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import TrainConfig, train
from e2urec.report import write_results

SECTIONS = {"protocol": Protocol, "tiny": TinyT5, "train": TrainConfig}


@dataclass
class Bench:
    dataset: str = "movielens"
    raw: str | None = None
    model: str = "tiny"  # "tiny" builds the embedded T5; otherwise a folder or hub name
    methods: tuple[str, ...] = ("retrain", "e2urec")
    eval_batch_size: int = 64
    protocol: Protocol = field(default_factory=Protocol)
    tiny: TinyT5 = field(default_factory=TinyT5)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict, where: str = "bench") -> Bench:
        data = copy.deepcopy(data)
        nested = {k: from_dict(c, data.pop(k, {}), f"{where}.{k}") for k, c in SECTIONS.items()}
        options = data.pop("method_options", {}) or {}
        bench = from_dict(cls, data, where)
        bench = cls(**{**asdict(bench), **nested, "method_options": options})
        for name in bench.methods:
            get_method(name, options.get(name))  # fail now, not after an hour of training
        return bench


def preset(name: str) -> dict:
    files = resources.files("e2urec") / "presets"
    known = sorted(
        p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")
    )
    if name not in known:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(known)}")
    return load_yaml(Path(str(files / f"{name}.yaml")))


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def run_bench(bench: Bench, out: str | Path) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = prepare(out / "data", bench.dataset, bench.raw, bench.protocol)
    splits = load_splits(out / "data")
    base = str(out / "base")
    if bench.model == "tiny":
        build_tiny_t5([s.input for s in splits["train"]], base, bench.tiny)
    else:
        base = bench.model
    original = out / "original"
    report = train(base, splits["train"], splits["valid"], original, bench.train)
    rows = {"original": _row(report["seconds"], report["trainable_params"], report["peak_rss_mb"])}
    models = {"original": str(original)}
    for name in bench.methods:
        method = get_method(name, bench.method_options.get(name))
        task = Task(
            str(original),
            splits["retain"],
            splits["forget"],
            splits["valid"],
            out / "methods" / name,
            base=base,
            train_config=bench.train,
        )
        result = method.unlearn(task)
        rows[name] = _row(result.seconds, result.trainable_params, result.peak_rss_mb)
        models[name] = result.model
    evaluate_all(models, rows, splits, bench.eval_batch_size)
    results = {"methods": rows, "config": _jsonable(bench), "data": manifest["counts"]}
    write_results(results, out)
    return results


def _row(seconds: float, params: int, rss: float) -> dict:
    return {"seconds": round(seconds, 2), "trainable_params": params, "peak_rss_mb": rss}


def evaluate_all(models: dict[str, str], rows: dict, splits, batch_size: int) -> None:
    """Utility on test and forget; closeness to Retrain on the forget set."""
    test_y = np.array([s.label for s in splits["test"]])
    forget_y = np.array([s.label for s in splits["forget"]])
    order = sorted(models, key=lambda n: n != "retrain")  # the reference first
    ref = None
    for name in order:
        rec = backbone.load(models[name])
        test = score(rec, splits["test"], batch_size, desc=f"eval {name} test")
        forget = score(rec, splits["forget"], batch_size, full=True, desc=f"eval {name} forget")
        rows[name]["test"] = classification(test_y, test["p_yes"])
        rows[name]["forget"] = classification(forget_y, forget["p_yes"])
        if name == "retrain":
            ref = forget
        if ref is not None:
            rows[name].update(closeness(forget["dist"], ref["dist"], forget["p_yes"], ref["p_yes"]))
        else:
            rows[name].update(dict.fromkeys(("jsd", "sym_kl", "l2", "jsd_yes_no")))


def _jsonable(bench: Bench) -> dict:
    data = asdict(bench)
    data["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return data


__all__ = ["Bench", "merge", "preset", "run_bench"]
