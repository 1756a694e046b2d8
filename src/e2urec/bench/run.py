"""`e2urec bench`: prepare -> original -> each unlearning method -> metrics -> tables."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path

from e2urec.bench.config import Bench, jsonable, method_rows, seeded
from e2urec.bench.over_seeds import aggregate, ci95, over_seeds, paired_over_seeds
from e2urec.bench.plots import plot_results, plot_sequential
from e2urec.bench.pool import single_threaded, worker_pool
from e2urec.bench.report import git_commit, write_results
from e2urec.bench.request_timing import time_requests
from e2urec.bench.resumable import local_inputs, stage
from e2urec.bench.row_evaluation import evaluate_all, evaluate_row
from e2urec.data import load_splits, prepare, template_texts
from e2urec.data.canaries import real
from e2urec.data.deletion import DeletionRequest, sample_key, select, split_users
from e2urec.evals.sets import EvalSets
from e2urec.memory import keep_freed_memory
from e2urec.methods import METHODS, Task, get_method
from e2urec.model import frozen, loader
from e2urec.model.frozen import FILE as BOTTOM_FILE
from e2urec.model.frozen import StoredBottom
from e2urec.model.tiny import build_tiny_t5
from e2urec.model.train import TrainConfig, train

INFO = ("aug_forget_loss", "orig_forget_loss")  # unlearning reports the table shows


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
        over_seeds(results, len(runs))
        results["data"] = runs[bench.seeds[0]]["data"]
    results["config"] = jsonable(bench)
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
    if bench.workers > 1 or bench.executor == "ray":
        with _pool(bench) as pool:
            _schedule(pool, bench, folders)
        return single_threaded(lambda: {s: run_seed(bench, folders[s], s) for s in seeds})
    return {s: run_seed(bench, folders[s], s) for s in seeds}


def _pool(bench: Bench):
    if bench.executor == "ray":
        from e2urec.bench.ray_pool import RayPool

        return RayPool(bench.workers, bench.address)
    return worker_pool(bench.workers)


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
    evaluate_row(run.models[row], sets, bench, run.out / "eval" / row, bottom=run.stored(bench))


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
            answers=tuple(self.manifest["protocol"]["answers"]),
        )  # fmt: skip

    def backbone_inputs(self) -> list:
        """What a model trained from the backbone depends on: the data, a local backbone and
        the bottom's states."""
        bottom = [self.bottom / BOTTOM_FILE] if self.bottom else []
        return [self.out / "data", *local_inputs(self.base), *bottom]

    def stored(self, bench: Bench) -> StoredBottom | None:
        """The backbone's stored bottom, which every row that kept that bottom is scored from."""
        if not self.bottom:
            return None
        t = bench.train
        return StoredBottom(self.base, t.top_layers, t.bottom_dtype, str(self.bottom / BOTTOM_FILE))

    def reported(self, forget: list) -> list:
        """The samples of `forget` from the eval half of the forgotten users."""
        users = set(self.manifest["forgotten_halves"]["eval"])
        return [s for s in forget if s.user in users]


def setup(bench: Bench, out: Path, original: bool = True) -> Run:
    """Prepare the data, build the backbone, train the original (unless `original` is False:
    for what needs only the backbone): each a resumable stage."""
    data = out / "data"
    inputs = [bench.raw] if bench.raw else []
    if bench.protocol.template not in ("paper", "compact"):  # a user's file: its text counts
        inputs.append(bench.protocol.template)
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
            build_tiny_t5(template_texts(data), folder, bench.tiny, bench.protocol.answers)

        stage(base, asdict(bench.tiny), [data], build)
    elif bench.base is not None:  # an adapter made elsewhere, described once as `init` does
        loader.check_base(bench.model, bench.base)
        base = str(out / "backbone")

        def describe(folder: Path) -> None:
            shutil.copytree(bench.model, folder, dirs_exist_ok=True)
            loader.describe(folder, bench.base, bench.protocol.answers)

        inputs = [bench.model, *local_inputs(bench.base)]
        stage(base, {"base": bench.base, "answers": bench.protocol.answers}, inputs, describe)

    bottom = setup_bottom(bench, data, splits, base)
    cache = str(bottom / BOTTOM_FILE) if bottom else None

    def train_original(folder: Path) -> dict:
        report = train(
            base, splits["train"], splits["valid"], folder, bench.train, cache,
            bench.protocol.answers,
        )  # fmt: skip
        _record_base(folder, base)
        row = _row(report["seconds"], report["trainable_params"], report["peak_rss_mb"])
        return {**row, "epochs_run": _epochs_run(folder)}

    folder = out / "original"
    rows, models = {}, {}
    if original:
        inputs = [data, *local_inputs(base), *([cache] if cache else [])]
        rows["original"] = stage(folder, asdict(bench.train), inputs, train_original)
        models["original"] = str(folder)
    if bench.model != "tiny":  # a pretrained backbone: how it does untuned, for reference
        rows = {"zero-shot": {"seconds": None, "trainable_params": 0, "peak_rss_mb": None}, **rows}
        models["zero-shot"] = base
    return Run(out, manifest, splits, base, str(folder), rows, models, bottom)


def setup_bottom(bench: Bench, data: Path, splits: dict, base: str) -> Path | None:
    """With train.top_layers, the backbone's frozen-bottom states of every sample of the data
    folder, computed once (a stage inside the data folder, derived from it: the purge deletes
    forgotten samples' entries) and read by every training from the backbone, whose
    fingerprints hash the states file itself, and by every evaluation of a model that kept
    the backbone's bottom."""
    if not bench.train.top_layers:
        return None
    folder = data / "bottom"
    config = {
        "model": base,
        "top_layers": bench.train.top_layers,
        "dtype": bench.train.bottom_dtype,
    }

    def work(folder: Path) -> dict:
        samples = [s for name in sorted(splits) for s in splits[name]]
        args = (bench.train.top_layers, bench.train.bottom_dtype, folder / BOTTOM_FILE)
        size = bench.train.eval_batch_size
        return {"states": frozen.store(base, samples, *args, size, bench.protocol.answers)}

    stage(folder, config, [data, *local_inputs(base)], work)
    return folder


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
    evaluate_all(run.models, run.rows, sets, bench, run.out / "eval", run.stored(bench))
    results = {
        "methods": run.rows,
        "data": run.manifest["counts"],
        "forget_reported": len(sets.forget),
        "forget_users": len({s.user for s in sets.forget}),
        # The forget set the methods see holds canaries too: its real part's size.
        "forget_real": len(real(run.splits["forget"])),
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
                answers=bench.protocol.answers,
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
        evaluate_all(latest, rows, sets, bench, bottom=run.stored(bench))
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
