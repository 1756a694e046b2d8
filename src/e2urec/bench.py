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
from scipy import stats

from e2urec.config import from_dict, load_yaml
from e2urec.data import load_splits, prepare
from e2urec.data.protocol import Protocol
from e2urec.evaluation import EvalSets, evaluate, history_mean_scorer, model_scorer
from e2urec.functional import js_divergence
from e2urec.methods import Task, get_method
from e2urec.metrics import closeness, jsd_verdict
from e2urec.mia import privleak
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import TrainConfig, train
from e2urec.plots import plot_results, plot_sequential
from e2urec.report import write_results
from e2urec.requests import DeletionRequest, sample_key, select, split_users

SECTIONS = {"protocol": Protocol, "tiny": TinyT5, "train": TrainConfig}
NOISE_SEED = 1000  # retrain_b's training seed is Retrain's plus this
INFO = ("aug_forget_loss", "orig_forget_loss")  # unlearning reports the table shows


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
    seeds: tuple[int, ...] = ()  # seeds to average over (see `seeded`)
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
    """Prepare, train and unlearn for each seed (the seed moves the forgotten users, the sample,
    the initialisation and the batch order; the time split stays); write results and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not bench.seeds:
        results = run_seed(bench, out, None)
    else:
        runs = {s: run_seed(bench, out / f"seed-{s}", s) for s in bench.seeds}
        mean, std = aggregate([{"methods": r["methods"]} for r in runs.values()])
        results = {**mean, "std": std, "ci95": ci95(std, len(runs)), "seeds": list(bench.seeds)}
        results["per_seed"] = {str(s): r for s, r in runs.items()}
        results["data"] = runs[bench.seeds[0]]["data"]
    results["config"] = _jsonable(bench)
    write_results(results, out)
    plot_results(results, out / "results.png")
    if results.get("sequential"):
        plot_sequential(results, out / "sequential.png")
    return results


def seeded(bench: Bench, seed: int | None) -> Bench:
    """The bench's configs with `seed` in every place a seed goes."""
    if seed is None:
        return bench
    options = {n: {**(bench.method_options.get(n) or {}), "seed": seed} for n in bench.methods}
    return replace(
        bench,
        protocol=replace(bench.protocol, seed=bench.protocol.seed + seed),
        tiny=replace(bench.tiny, seed=seed),
        train=replace(bench.train, seed=seed),
        method_options=options,
    )


def run_seed(bench: Bench, out: Path, seed: int | None) -> dict:
    """Data, the original, each method, the references, (sequential requests) for one seed."""
    bench = seeded(bench, seed)
    manifest = prepare(out / "data", bench.dataset, bench.raw, bench.protocol)
    splits = load_splits(out / "data")
    base = str(out / "base")
    if bench.model == "tiny":
        build_tiny_t5([s.input for s in splits["train"]], base, bench.tiny)
    else:
        base = bench.model
    if bench.sequential > 1:  # refuse too many requests before training
        split_users(manifest["forgotten_users"], bench.sequential)
    original = out / "original"
    report = train(base, splits["train"], splits["valid"], original, bench.train)
    _record_base(original, base)
    rows = {"original": _row(report["seconds"], report["trainable_params"], report["peak_rss_mb"])}
    rows["original"]["epochs_run"] = _epochs_run(original)
    models = {"original": str(original)}
    if bench.model != "tiny":  # a pretrained backbone: how it does untuned, for reference
        rows = {"zero-shot": {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}, **rows}
        models["zero-shot"] = base
    runs = [(n, n, bench.train) for n in bench.methods]
    if "retrain" in bench.methods:  # the noise floor: Retrain again, another seed
        again = replace(bench.train, seed=bench.train.seed + NOISE_SEED)
        runs.insert(bench.methods.index("retrain") + 1, ("retrain_b", "retrain", again))
    for row, name, config in runs:
        task = Task(
            str(original), splits["retain"], splits["forget"], splits["valid"],
            out / "methods" / row, base=base, train_config=config,
        )  # fmt: skip
        result = get_method(name, bench.method_options.get(name)).unlearn(task)
        rows[row] = _row(result.seconds, result.trainable_params, result.peak_rss_mb)
        rows[row].update({k: result.info[k] for k in INFO if k in result.info})
        rows[row]["epochs_run"] = _epochs_run(result.model)
        models[row] = result.model
    reported = set(manifest["forgotten_halves"]["eval"])
    sets = EvalSets.make(
        splits, [s for s in splits["forget"] if s.user in reported], bench.mia_seed
    )
    evaluate_all(models, rows, sets, bench)
    results = {"methods": rows, "data": manifest["counts"], "forget_reported": len(sets.forget)}
    if bench.sequential > 1:
        results["sequential"] = run_sequential(bench, splits, manifest, str(original), base, out)
    return results


def run_sequential(bench, splits, manifest, original, base, out) -> dict:
    """The forgotten users as `bench.sequential` successive requests, each method applied on
    top of its previous result (Retrain retrains from the backbone on what remains)."""
    chunks = split_users(manifest["forgotten_users"], bench.sequential)
    reported = set(manifest["forgotten_halves"]["eval"])
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
                latest[name], chosen.retain, chosen.forget, splits["valid"],
                out / "sequential" / name / f"step-{step}", base=base, train_config=bench.train,
            )  # fmt: skip
            result = get_method(name, bench.method_options.get(name)).unlearn(task)
            latest[name] = result.model
            rows[name] = {
                "step": step,
                "users": len(users),
                "forgotten_samples": len(so_far),
                **_row(result.seconds, result.trainable_params, result.peak_rss_mb),
            }
        forget = [s for s in so_far if s.user in reported] or so_far
        sets = EvalSets.make({**splits, "retain": chosen.retain}, forget, bench.mia_seed)
        evaluate_all(latest, rows, sets, bench)
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


def _epochs_run(model: str | Path) -> int | None:
    """Epochs a trained model actually ran (early stopping), from its training report."""
    path = Path(model) / "train_report.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    return report.get("epochs_run", len(report.get("history", [])) or None)


def _row(seconds: float, params: int, rss: float) -> dict:
    return {"seconds": round(seconds, 2), "trainable_params": params, "peak_rss_mb": rss}


def evaluate_all(models: dict[str, str], rows: dict, sets: EvalSets, bench: Bench) -> None:
    """Every model and the no-training rule on the same sets; then, against Retrain: closeness
    on the forget set with paired bootstrap intervals and verdicts, and PrivLeak."""
    dists = {}
    for name, model in models.items():
        metrics, dists[name] = evaluate(
            model_scorer(model, bench.eval_batch_size), sets, bench.mia_seed
        )
        rows[name].update(metrics)
    if "original" in models:  # a full run (not a sequential step): the reference rule too
        rows["history_mean"] = {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}
        rows["history_mean"].update(evaluate(history_mean_scorer, sets, bench.mia_seed)[0])
    ref = dists.get("retrain")
    per_sample = {}
    for name, row in rows.items():
        if ref is None or name not in dists:
            row.update(dict.fromkeys(("jsd", "sym_kl", "l2", "jsd_yes_no", "privleak")))
            continue
        f = dists[name]
        row.update(closeness(f["dist"], ref["dist"], f["p_yes"], ref["p_yes"]))
        per_sample[name] = js_divergence(f["dist"], ref["dist"])
        row["privleak"] = privleak(row["mia_auc"], rows["retrain"]["mia_auc"])
    if {"original", "retrain_b"} <= per_sample.keys():
        for name, jsd in per_sample.items():
            floor = per_sample["retrain_b"]
            rows[name].update(jsd_verdict(jsd, per_sample["original"], floor, bench.mia_seed))


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
    if all(isinstance(t, bool) for t in trees):  # a verdict: the share of seeds it held in
        return float(np.mean(trees)), None
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in trees):
        values = np.array(trees, dtype=np.float64)
        if all(isinstance(t, int) for t in trees) and len(set(trees)) == 1:
            return first, 0.0
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return float(values.mean()), std
    return first, None


def ci95(std, n: int):
    """Half-widths of the 95% t-interval of the mean over `n` seeds, leaf by leaf of `std`."""
    if isinstance(std, dict):
        return {k: ci95(v, n) for k, v in std.items()}
    if isinstance(std, list):
        return [ci95(v, n) for v in std]
    if isinstance(std, (int, float)) and n > 1:
        return float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n))
    return None


def _jsonable(bench: Bench) -> dict:
    data = asdict(bench)
    data["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return data


__all__ = ["Bench", "aggregate", "merge", "preset", "run_bench"]
