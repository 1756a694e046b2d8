"""`e2urec bench`: prepare -> original -> each unlearning method -> metrics -> tables."""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from e2urec.api import assess
from e2urec.config import from_dict, load_yaml
from e2urec.data import load_splits, prepare
from e2urec.data.protocol import Protocol
from e2urec.methods import Task, get_method
from e2urec.metrics import closeness
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import TrainConfig, train
from e2urec.plots import plot_results, plot_sequential
from e2urec.report import write_results
from e2urec.requests import DeletionRequest, sample_key, select, split_users

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
    seeds: tuple[int, ...] = ()  # train and method seeds to average over; data stay fixed
    sequential: int = 0  # > 1: also forget the users in this many successive requests
    mia_seed: int = 0  # which test samples train the attack and which are held out

    def __post_init__(self):
        if self.sequential < 0:
            raise ValueError(f"sequential must be >= 0, got {self.sequential}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")

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
    """Prepare the data once, then train and unlearn for each seed; write results and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = prepare(out / "data", bench.dataset, bench.raw, bench.protocol)
    splits = load_splits(out / "data")
    base = str(out / "base")
    if bench.model == "tiny":
        build_tiny_t5([s.input for s in splits["train"]], base, bench.tiny)
    else:
        base = bench.model
    users = manifest["forgotten_users"]
    if bench.sequential > 1:
        split_users(users, bench.sequential)  # refuse too many requests before training
    if not bench.seeds:
        results = run_seed(bench, splits, users, base, out, None)
    else:
        runs = {s: run_seed(bench, splits, users, base, out / f"seed-{s}", s) for s in bench.seeds}
        mean, std = aggregate(list(runs.values()))
        results = {**mean, "std": std, "seeds": list(bench.seeds)}
        results["per_seed"] = {str(s): r for s, r in runs.items()}
    results.update(config=_jsonable(bench), data=manifest["counts"])
    write_results(results, out)
    plot_results(results, out / "results.png")
    if results.get("sequential"):
        plot_sequential(results, out / "sequential.png")
    return results


def run_seed(bench: Bench, splits, forgotten: list[str], base: str, out: Path, seed) -> dict:
    """The original, each method, (sequential requests); `seed`, if not None, seeds them all."""
    config = bench.train if seed is None else replace(bench.train, seed=seed)
    options = {
        name: {**(bench.method_options.get(name) or {}), **({} if seed is None else {"seed": seed})}
        for name in bench.methods
    }
    original = out / "original"
    report = train(base, splits["train"], splits["valid"], original, config)
    _record_base(original, base)
    rows = {"original": _row(report["seconds"], report["trainable_params"], report["peak_rss_mb"])}
    models = {"original": str(original)}
    if bench.model != "tiny":  # a pretrained backbone: how it does untuned, for reference
        rows = {"zero-shot": {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}, **rows}
        models["zero-shot"] = base
    for name in bench.methods:
        task = Task(
            str(original),
            splits["retain"],
            splits["forget"],
            splits["valid"],
            out / "methods" / name,
            base=base,
            train_config=config,
        )
        result = get_method(name, options[name]).unlearn(task)
        rows[name] = _row(result.seconds, result.trainable_params, result.peak_rss_mb)
        models[name] = result.model
    evaluate_all(models, rows, splits["forget"], splits["retain"], splits["test"], bench)
    results = {"methods": rows}
    if bench.sequential > 1:
        results["sequential"] = run_sequential(
            bench, splits, forgotten, str(original), base, out, config, options
        )
    return results


def run_sequential(bench, splits, forgotten, original, base, out, config, options) -> dict:
    """The forgotten users as `bench.sequential` successive requests, each method applied on
    top of its previous result (Retrain retrains from the backbone on what remains)."""
    chunks = split_users(forgotten, bench.sequential)
    latest = dict.fromkeys(bench.methods, original)
    removed: set[tuple] = set()
    steps = {name: [] for name in bench.methods}
    for step, users in enumerate(chunks, 1):
        chosen = select(splits["train"], DeletionRequest(tuple(users)), removed)
        removed |= {sample_key(s) for s in chosen.forget}
        so_far = [s for s in splits["train"] if sample_key(s) in removed]
        rows = {}
        for name in bench.methods:
            task = Task(
                latest[name],
                chosen.retain,
                chosen.forget,
                splits["valid"],
                out / "sequential" / name / f"step-{step}",
                base=base,
                train_config=config,
            )
            result = get_method(name, options[name]).unlearn(task)
            latest[name] = result.model
            rows[name] = {
                "step": step,
                "users": len(users),
                "forgotten_samples": len(so_far),
                **_row(result.seconds, result.trainable_params, result.peak_rss_mb),
            }
        evaluate_all(latest, rows, so_far, chosen.retain, splits["test"], bench)
        for name in bench.methods:
            steps[name].append(rows[name])
    return {"steps": len(chunks), "requests": chunks, "methods": steps}


def _record_base(original: Path, base: str) -> None:
    """Note the backbone in the original's report, so `e2urec forget` can retrain from it;
    a local folder is noted relative to the original, so the run folder can move."""
    path = original / "train_report.json"
    report = json.loads(path.read_text())
    report["base"] = os.path.relpath(base, original) if Path(base).exists() else base
    path.write_text(json.dumps(report, indent=2) + "\n")


def _row(seconds: float, params: int, rss: float) -> dict:
    return {"seconds": round(seconds, 2), "trainable_params": params, "peak_rss_mb": rss}


def evaluate_all(models: dict[str, str], rows: dict, forget, retain, test, bench: Bench) -> None:
    """Utility on test and forget, MIA AUC; closeness to Retrain on the forget set."""
    ref = None
    for name in sorted(models, key=lambda n: n != "retrain"):  # the reference first
        metrics, scores = assess(
            models[name], test, forget, retain, bench.eval_batch_size, bench.mia_seed, full=True
        )
        rows[name].update(metrics)
        if name == "retrain":
            ref = scores
        if ref is not None:
            rows[name].update(closeness(scores["dist"], ref["dist"], scores["p_yes"], ref["p_yes"]))
        else:
            rows[name].update(dict.fromkeys(("jsd", "sym_kl", "l2", "jsd_yes_no")))


def aggregate(trees: list):
    """Mean and sample standard deviation, leaf by leaf, of equally shaped results.

    Numbers are averaged; anything else (names, None) is kept from the first tree in the
    mean and left out of the std.
    """
    first = trees[0]
    if isinstance(first, dict):
        pairs = {k: aggregate([t.get(k) for t in trees]) for k in first}
        return {k: m for k, (m, _) in pairs.items()}, {
            k: sd for k, (_, sd) in pairs.items() if sd is not None
        }
    if isinstance(first, list) and all(isinstance(t, list) and len(t) == len(first) for t in trees):
        pairs = [aggregate(list(col)) for col in zip(*trees)]
        stds = [sd for _, sd in pairs]
        return [m for m, _ in pairs], (stds if any(sd is not None for sd in stds) else None)
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in trees):
        values = np.array(trees, dtype=np.float64)
        if all(isinstance(t, int) for t in trees) and len(set(trees)) == 1:
            return first, 0.0
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return float(values.mean()), std
    return first, None


def _jsonable(bench: Bench) -> dict:
    data = asdict(bench)
    data["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return data


__all__ = ["Bench", "aggregate", "merge", "preset", "run_bench"]
