"""`e2urec tune`: the same hyperparameter rule for every approximate unlearning method.

Each method in APPROXIMATE is run over the same grid of learning rates and epochs on the
bench's own task (the trained original, the whole forget set). The rule looks only at valid data
and at the *tune* half of the forgotten users (manifest `forgotten_halves`); the bench reports
forget-set metrics on the other half, so nothing reported was looked at while choosing:

  among the settings whose valid AUC is at least the original's minus `max_valid_auc_drop`
  (and, for E2URec, whose augmented model ended with a lower forget-set loss than the
  original's), take the one whose outputs on the tune half are closest to Retrain's (mean
  JSD); if none qualifies, take the one with the best valid AUC.

E2URec's augmented model takes the same budget as the student (aug_lr = lr, aug_epochs =
epochs), so its forgetting teacher is tuned by the same rule, not by hand. A setting whose
augmented model did not learn the forget data (its training data) is not E2URec: its
forgetting teacher `orig - alpha * relu(aug - orig)` then pushes on noise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from e2urec.bench.config import Bench
from e2urec.bench.pool import single_threaded, worker_pool
from e2urec.bench.resumable import MARKER
from e2urec.bench.run import INFO, Run, setup, unlearn
from e2urec.data.canaries import real
from e2urec.maths import js_divergence
from e2urec.metrics import scored_classification
from e2urec.model import loader, score

APPROXIMATE = ("neggrad", "bad_t", "bad_teacher", "scrub", "e2urec")


@dataclass
class TuneConfig:
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    epochs: tuple[int, ...] = (1, 3)
    max_valid_auc_drop: float = 0.02  # utility the rule lets a setting give up

    def __post_init__(self):
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"lrs must be positive learning rates, got {self.lrs}")
        if not self.epochs or min(self.epochs) < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.max_valid_auc_drop < 0:
            raise ValueError("max_valid_auc_drop must be >= 0")


def grid_options(method: str, lr: float, epochs: int) -> dict:
    options = {"lr": lr, "epochs": epochs}
    if method == "e2urec":
        options.update(aug_lr=lr, aug_epochs=epochs, forget_epochs=min(1, epochs))
    if method == "scrub":
        options["msteps"] = min(1, epochs)
    return options


def tune(bench: Bench, out: str | Path, config: TuneConfig | None = None) -> dict:
    """Run the grid for the bench's approximate methods; write and return tune.json."""
    config = config or TuneConfig()
    out = Path(out)

    def start() -> Run:
        run = setup(bench, out)
        unlearn(run, "retrain", "retrain", bench.method_options.get("retrain"), bench.train)
        return run

    # Trained on one thread, as the bench's workers train them: the thread count changes the
    # order of float sums, and so the original the options are chosen for.
    run = single_threaded(start) if bench.workers > 1 else start()
    forget = _tune_forget(run)
    if not forget:
        raise ValueError("the tune half of the forgotten users has no samples: forget more users")
    original = judge_for(run, bench.eval_batch_size)(run.original)  # where they start
    floor = original["valid_auc"] - config.max_valid_auc_drop
    grid = {m: [] for m in bench.methods if m in APPROXIMATE}
    for method, settings in grid.items():
        for lr in config.lrs:
            for epochs in config.epochs:
                options = {**(bench.method_options.get(method) or {})}
                options.update(grid_options(method, lr, epochs))
                settings.append((f"{method}-lr{lr:g}-ep{epochs}", options))
    jobs = [(bench, out, method, row, options) for method, s in grid.items() for row, options in s]
    if bench.workers > 1:  # trials are independent: single-thread processes side by side
        with worker_pool(bench.workers) as pool:
            done = [f.result() for f in [pool.submit(trial, *job) for job in jobs]]
    else:
        done = [trial(*job) for job in jobs]
    trials = {m: [t for (_, _, method, _, _), t in zip(jobs, done) if method == m] for m in grid}
    chosen = {m: pick(t, floor)["options"] for m, t in trials.items()}
    result = {
        "rule": __doc__.split("\n\n")[1].strip(),
        "grid": asdict(config),
        "original_valid_auc": original["valid_auc"],
        "original_tune_jsd": original["tune_jsd"],
        "chosen": chosen,
        "trials": trials,
        "forget_tune_samples": len(forget),
    }
    (out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def trial(bench: Bench, out: Path, method: str, row: str, options: dict) -> dict:
    """One grid point: unlearn (a resumable stage), then what the rule may look at."""
    run = setup(bench, out)
    unlearn(run, "retrain", "retrain", bench.method_options.get("retrain"), bench.train)  # done
    unlearn(run, row, method, options, bench.train)
    judge = judge_for(run, bench.eval_batch_size)
    info = {k: run.rows[row][k] for k in INFO if k in run.rows[row]}  # E2URec's teacher losses
    return {"options": options, **judge(run.models[row]), **info}


_JUDGE: dict[tuple, Judge] = {}  # this process's latest: Retrain is scored once, not per trial


def judge_for(run: Run, batch_size: int) -> Judge:
    """The run's Judge, kept while Retrain's stage (its marker) and the batch size stay."""
    retrain = Path(run.models["retrain"])
    key = (str(retrain.resolve()), (retrain / MARKER).read_text(), batch_size)
    if key not in _JUDGE:
        _JUDGE.clear()
        _JUDGE[key] = Judge(run, _tune_forget(run), batch_size)
    return _JUDGE[key]


def _tune_forget(run: Run) -> list:
    tune_half = set(run.manifest["forgotten_halves"]["tune"])
    return [s for s in real(run.splits["forget"]) if s.user in tune_half]


def pick(trials: list[dict], floor: float) -> dict:
    kept = [t for t in trials if t["valid_auc"] >= floor and _teacher_learned(t)]
    if kept:
        return min(kept, key=lambda t: t["tune_jsd"])
    return max(trials, key=lambda t: t["valid_auc"])


def _teacher_learned(trial: dict) -> bool:
    """E2URec's augmented model lowered the forget-set loss (other methods have none)."""
    aug = trial.get("aug_forget_loss")
    return aug is None or aug < trial["orig_forget_loss"]


class Judge:
    """What the rule may look at: valid AUC, and JSD to Retrain on the tune half."""

    def __init__(self, run: Run, forget: list, batch_size: int):
        self.valid, self.forget, self.batch_size = run.splits["valid"], forget, batch_size
        self.retrain = self._dist(loader.load(run.models["retrain"]))

    def _dist(self, rec) -> np.ndarray:
        return score(rec, self.forget, self.batch_size, full=True)["dist"]

    def _valid_auc(self, rec) -> float:
        s = score(rec, self.valid, self.batch_size)
        return scored_classification(self.valid, s)["auc"]

    def __call__(self, model: str) -> dict:
        rec = loader.load(model)  # once for both numbers
        jsd = js_divergence(self._dist(rec), self.retrain).mean()
        return {"valid_auc": self._valid_auc(rec), "tune_jsd": float(jsd)}
