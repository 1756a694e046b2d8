"""`e2urec bench`: prepare -> original -> each unlearning method -> metrics -> tables."""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
from e2urec.latency import time_requests
from e2urec.methods import METHODS, Task, get_method
from e2urec.metrics import closeness, jsd_verdict
from e2urec.mia import privleak
from e2urec.model import frozen
from e2urec.model.frozen import FILE as BOTTOM_FILE
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import TrainConfig, train
from e2urec.plots import plot_results, plot_sequential
from e2urec.report import cell, git_commit, write_results
from e2urec.requests import DeletionRequest, sample_key, select, split_users
from e2urec.resources import keep_freed_memory
from e2urec.stages import stage

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
    workers: int = 1  # > 1: originals, methods and evaluations side by side (run_seeds)
    requests: int = 0  # > 0: also time this many single-user E2URec requests
    sequential: int = 0  # > 1: also forget the users in this many successive requests
    mia_seed: int = 0  # which test samples train the attack and which are held out

    def __post_init__(self):
        if self.sequential < 0:
            raise ValueError(f"sequential must be >= 0, got {self.sequential}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
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
    values = load_yaml(Path(str(files / f"{name}.yaml")))
    base = values.pop("extends", None)  # a preset written as its differences from another
    return merge(preset(base), values) if base else values


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
    commit = git_commit()  # the code that runs: HEAD may move during a long run
    runs = run_seeds(bench, out)
    if not bench.seeds:
        results = runs[None]
    else:
        mean, std = aggregate([{"methods": r["methods"]} for r in runs.values()])
        results = {**mean, "std": std, "ci95": ci95(std, len(runs)), "seeds": list(bench.seeds)}
        results["per_seed"] = {str(s): r for s, r in runs.items()}
        results["paired"] = paired_over_seeds([r["methods"] for r in runs.values()])
        results["data"] = runs[bench.seeds[0]]["data"]
    results["config"] = _jsonable(bench)
    results["git"] = commit
    write_results(results, out)
    plot_results(results, out / "results.png")
    if results.get("sequential"):
        plot_sequential(results, out / "sequential.png")
    return results


def run_seeds(bench: Bench, out: Path) -> dict:
    """Each seed's result. With `workers` > 1 the work is spread over that many single-thread
    processes: each seed's data and backbone; then its original beside the rows that train
    from the backbone (Retrain, retrain_b, the shard methods); once the original is ready, the
    rows that start from it. Each row is its unlearning and its evaluation. Every piece is a
    resumable stage, so the final pass here only reads them."""
    seeds = bench.seeds or (None,)
    folders = {s: out if s is None else out / f"seed-{s}" for s in seeds}
    keep_freed_memory()
    if bench.workers > 1:
        with worker_pool(bench.workers) as pool:
            _schedule(pool, bench, folders)
        return single_threaded(lambda: {s: run_seed(bench, folders[s], s) for s in seeds})
    return {s: run_seed(bench, folders[s], s) for s in seeds}


def _schedule(pool: ProcessPoolExecutor, bench: Bench, folders: dict) -> None:
    """Each job is submitted as soon as what it needs has finished (FIFO after that)."""
    scratch, after = [], []
    for row, method, _ in method_rows(bench):
        (after if METHODS[method].needs_original else scratch).append(row)
    after.append("original")  # its evaluation: the shortest job last

    def submit(job, seed, *args):
        return pool.submit(job, bench, folders[seed], seed, *args), (job, seed)

    pending = dict(submit(_setup_job, s) for s in folders)
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            job, seed = pending.pop(future)
            future.result()  # re-raises a worker's error here
            if job is _setup_job:
                nexts = [submit(_original_job, seed)]
                nexts += [submit(_row_job, seed, row, False) for row in scratch]
            elif job is _original_job:
                nexts = [submit(_row_job, seed, row, True) for row in after]
            else:
                nexts = []
            pending.update(nexts)


def single_threaded(work):
    """`work()` on one thread, as the workers ran: requests are timed against their Retrain."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return work()
    finally:
        torch.set_num_threads(before)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` single-thread processes: on few cores, two one-thread trainings finish sooner
    than one two-thread training."""
    spawn = multiprocessing.get_context("spawn")  # torch and fork do not mix
    # A spawned process starts with Python's default warning filters: the caller's go along.
    args = (os.getpid(), list(warnings.filters))
    return ProcessPoolExecutor(workers, spawn, initializer=_worker, initargs=args)


def _worker(parent: int, filters: list) -> None:
    import torch

    torch.set_num_threads(1)
    keep_freed_memory()
    warnings.filters[:] = filters
    # A killed bench (kill, OOM, lost session) would leave its workers training on, writing
    # into stages that a rerun of the same command also writes: they leave with their parent.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _setup_job(bench: Bench, out: Path, seed: int | None) -> None:
    setup(seeded(bench, seed), out, original=False)


def _original_job(bench: Bench, out: Path, seed: int | None) -> None:
    setup(seeded(bench, seed), out)


def _row_job(bench: Bench, out: Path, seed: int | None, row: str, original: bool) -> None:
    """One row of one seed: its unlearning (a method) and its evaluation, as stages."""
    bench = seeded(bench, seed)
    run = setup(bench, out, original)
    for name, method, config in method_rows(bench):
        if name == row:
            unlearn(run, name, method, bench.method_options.get(method), config)
    sets = EvalSets.make(run.splits, run.reported(run.splits["forget"]), bench.mia_seed)
    _evaluate(run.models[row], sets, bench, run.out / "eval" / row)


def method_rows(bench: Bench) -> list[tuple[str, str, TrainConfig]]:
    """(row, method, training config) for every unlearning row: the methods, and after Retrain
    the noise floor, Retrain again with another seed."""
    rows = []
    for name in bench.methods:
        rows.append((name, name, bench.train))
        if name == "retrain":
            rows.append(
                ("retrain_b", name, replace(bench.train, seed=bench.train.seed + NOISE_SEED))
            )
    return rows


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


@dataclass
class Run:
    """One seed's prepared data, backbone and trained original: what every method starts from."""

    out: Path
    manifest: dict
    splits: dict
    base: str
    original: str
    rows: dict
    models: dict
    bottom: Path | None = None  # the stage holding the frozen bottom's states (top_layers)

    def task(self, row: str, config: TrainConfig) -> Task:
        s = self.splits
        cache = str(self.bottom / BOTTOM_FILE) if self.bottom and config.top_layers else None
        return Task(
            self.original, s["retain"], s["forget"], s["valid"], self.out / "methods" / row,
            base=self.base, train_config=config, bottom_cache=cache,
        )  # fmt: skip

    def backbone_inputs(self) -> list:
        """What a model trained from the backbone depends on: the data, a local backbone and
        the bottom's states."""
        bottom = [self.bottom / BOTTOM_FILE] if self.bottom else []
        return [self.out / "data", *_local(self.base), *bottom]

    def reported(self, forget: list) -> list:
        """The samples of `forget` from the eval half of the forgotten users."""
        users = set(self.manifest["forgotten_halves"]["eval"])
        return [s for s in forget if s.user in users]


def setup(bench: Bench, out: Path, original: bool = True) -> Run:
    """Prepare the data, build the backbone, train the original (unless `original` is False:
    for what needs only the backbone): each a resumable stage."""
    data = out / "data"
    inputs = [bench.raw] if bench.raw else []
    config = {"dataset": bench.dataset, "raw": bench.raw, "protocol": asdict(bench.protocol)}
    manifest = stage(
        data, config, inputs, lambda f: prepare(f, bench.dataset, bench.raw, bench.protocol)
    )
    splits = load_splits(data)
    if bench.sequential > 1:  # refuse too many requests before training
        split_users(manifest["forgotten_users"], bench.sequential)
    base = bench.model
    if bench.model == "tiny":
        base = str(out / "base")

        def build(folder: Path) -> None:
            build_tiny_t5([s.input for s in splits["train"]], folder, bench.tiny)

        stage(base, asdict(bench.tiny), [data], build)

    bottom = setup_bottom(bench, data, splits, base)
    cache = str(bottom / BOTTOM_FILE) if bottom else None

    def train_original(folder: Path) -> dict:
        report = train(base, splits["train"], splits["valid"], folder, bench.train, cache)
        _record_base(folder, base)
        row = _row(report["seconds"], report["trainable_params"], report["peak_rss_mb"])
        return {**row, "epochs_run": _epochs_run(folder)}

    folder = out / "original"
    rows, models = {}, {}
    if original:
        inputs = [data, *_local(base), *([cache] if cache else [])]
        rows["original"] = stage(folder, asdict(bench.train), inputs, train_original)
        models["original"] = str(folder)
    if bench.model != "tiny":  # a pretrained backbone: how it does untuned, for reference
        rows = {"zero-shot": {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}, **rows}
        models["zero-shot"] = base
    return Run(out, manifest, splits, base, str(folder), rows, models, bottom)


def setup_bottom(bench: Bench, data: Path, splits: dict, base: str) -> Path | None:
    """With train.top_layers, the backbone's frozen-bottom states of every train and valid
    sample, computed once (a stage inside the data folder, derived from it: the purge deletes
    forgotten samples' entries) and read by the original, Retrain and the shards, whose
    fingerprints hash the states file itself."""
    if not bench.train.top_layers:
        return None
    folder = data / "bottom"
    config = {
        "model": base,
        "top_layers": bench.train.top_layers,
        "dtype": bench.train.bottom_dtype,
    }

    def work(folder: Path) -> dict:
        samples = splits["train"] + splits["valid"]
        args = (bench.train.top_layers, bench.train.bottom_dtype, folder / BOTTOM_FILE)
        return {"states": frozen.store(base, samples, *args, bench.train.eval_batch_size)}

    stage(folder, config, [data, *_local(base)], work)
    return folder


def _local(model: str) -> list[str]:
    """A model that is a local folder is an input whose change redoes what uses it."""
    return [model] if Path(model).exists() else []


def unlearn(run: Run, row: str, method: str, options: dict | None, config: TrainConfig) -> None:
    """Apply `method` to the run's original (a resumable stage); its row and model go into
    the run."""

    def work(folder: Path) -> dict:
        result = get_method(method, options).unlearn(run.task(row, config))
        out = _row(result.seconds, result.trainable_params, result.peak_rss_mb)
        out.update({k: result.info[k] for k in INFO if k in result.info})
        return {**out, "epochs_run": _epochs_run(result.model)}

    folder = run.out / "methods" / row
    settings = {"method": method, "options": options or {}, "train": asdict(config)}
    inputs = [run.original] if METHODS[method].needs_original else run.backbone_inputs()
    run.rows[row] = stage(folder, settings, inputs, work)
    run.models[row] = str(folder)


def run_seed(bench: Bench, out: Path, seed: int | None) -> dict:
    """Data, the original, each method, the references, (sequential requests) for one seed."""
    bench = seeded(bench, seed)
    run = setup(bench, out)
    for row, method, config in method_rows(bench):
        unlearn(run, row, method, bench.method_options.get(method), config)
    sets = EvalSets.make(run.splits, run.reported(run.splits["forget"]), bench.mia_seed)
    evaluate_all(run.models, run.rows, sets, bench, run.out / "eval")
    results = {
        "methods": run.rows,
        "data": run.manifest["counts"],
        "forget_reported": len(sets.forget),
    }
    if bench.requests and "e2urec" in bench.methods and "retrain" in run.rows:
        results["requests"] = time_single_requests(bench, run)
    if bench.sequential > 1:
        results["sequential"] = run_sequential(bench, run)
    return results


def time_single_requests(bench: Bench, run: Run) -> dict:
    """`bench.requests` single-user E2URec requests one after another, against one Retrain."""
    users = run.manifest["forgotten_halves"]["eval"]
    settings = {"n": bench.requests, "options": bench.method_options.get("e2urec") or {}}

    def work(folder: Path) -> dict:
        return time_requests(
            run.out / "data", run.original, users, folder, run.rows["retrain"]["seconds"],
            "e2urec", settings["options"], min(bench.requests, len(users)),
        )  # fmt: skip

    return stage(run.out / "requests", settings, [run.original], work)


def run_sequential(bench: Bench, run: Run) -> dict:
    """The forgotten users as `bench.sequential` successive requests, each method applied on
    top of its previous result (Retrain retrains from the backbone on what remains)."""
    splits, out = run.splits, run.out
    chunks = split_users(run.manifest["forgotten_users"], bench.sequential)
    latest = dict.fromkeys(bench.methods, run.original)
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
                out / "sequential" / name / f"step-{step}", base=run.base, train_config=bench.train,
            )  # fmt: skip
            result = get_method(name, bench.method_options.get(name)).unlearn(task)
            latest[name] = result.model
            rows[name] = {
                "step": step,
                "users": len(users),
                "forgotten_samples": len(so_far),
                **_row(result.seconds, result.trainable_params, result.peak_rss_mb),
            }
        forget = run.reported(so_far) or so_far
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


def evaluate_all(models: dict, rows: dict, sets: EvalSets, bench: Bench, cache=None) -> None:
    """Every model and the no-training rule on the same sets; then, against Retrain: closeness
    on the forget set with paired bootstrap intervals and verdicts, and PrivLeak. With `cache`
    (a folder), each model's evaluation is a resumable stage there."""
    dists = {}
    for name, model in models.items():
        metrics, dists[name] = _evaluate(model, sets, bench, cache and Path(cache) / name)
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


FORGET = "forget_scores.npz"


def _evaluate(model: str, sets: EvalSets, bench: Bench, folder: Path | None):
    """(metrics, forget scores) of one model; with `folder`, a resumable stage that keeps
    the forget scores beside its marker."""
    if folder is None:
        return evaluate(model_scorer(model, bench.eval_batch_size), sets, bench.mia_seed)

    def work(out: Path) -> dict:  # loads the model only when the stage must run
        metrics, forget = evaluate(model_scorer(model, bench.eval_batch_size), sets, bench.mia_seed)
        np.savez(out / FORGET, **forget)
        return metrics

    settings = {"mia_seed": bench.mia_seed, "eval_batch_size": bench.eval_batch_size}
    data = folder.parent.parent / "data"  # folder is <run>/eval/<row>
    metrics = stage(folder, settings, [data, *_local(model)], work)
    return metrics, dict(np.load(folder / FORGET))


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


# (metric, reference row): differences taken within each seed. A seed moves the data, the
# forgotten users and the initialisation of every row alike, so the spread of a row over seeds
# (up to 0.15 test AUC) mostly cancels in its difference to another row of the same seed.
PAIRED = (
    (("jsd",), "original"),
    (("jsd",), "retrain_b"),
    (("canary_exposure",), "original"),
    (("canary_retained",), "original"),  # forgetting that erases retained users' too is not
    (("test", "auc"), "original"),
)


def paired_over_seeds(seeds: list[dict]) -> dict:
    """Per row, its difference to each reference row seed by seed: mean and 95% t-interval
    over the seeds (`{row: {"jsd - original": {"mean", "low", "high", "n"}}}`)."""
    out: dict = {}
    for row in seeds[0]:
        for path, ref in PAIRED:
            if row == ref:
                continue
            diffs = [_number(s.get(row), path) - _number(s.get(ref), path) for s in seeds]
            diffs = [d for d in diffs if d == d]  # NaN: a seed lacks the row or the metric
            if len(diffs) < 2:
                continue
            mean, half = float(np.mean(diffs)), ci95(float(np.std(diffs, ddof=1)), len(diffs))
            out.setdefault(row, {})[f"{'.'.join(path)} - {ref}"] = {
                "mean": mean,
                "low": mean - half,
                "high": mean + half,
                "n": len(diffs),
            }
    return out


def _number(row: dict | None, path: tuple[str, ...]) -> float:
    value = cell(row, path)
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _jsonable(bench: Bench) -> dict:
    data = asdict(bench)
    data["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return data


__all__ = ["Bench", "aggregate", "merge", "paired_over_seeds", "preset", "run_bench"]
