"""The tuning rule: one grid for every approximate method, judged on valid and the tune half."""

from __future__ import annotations

import json

import pytest
import torch

from e2urec.bench import Bench, merge, preset
from e2urec.bench import tune as tune_module
from e2urec.bench.tune import Judge, TuneConfig, pick, tune
from e2urec.cli import main
from e2urec.data import load_splits
from e2urec.data.canaries import real


def test_pick_keeps_utility_then_takes_the_closest_to_retrain():
    trials = [
        {"valid_auc": 0.70, "tune_jsd": 0.01},  # closest, but lost utility
        {"valid_auc": 0.79, "tune_jsd": 0.05},
        {"valid_auc": 0.80, "tune_jsd": 0.03},
    ]
    assert pick(trials, floor=0.78) is trials[2]
    assert pick(trials, floor=0.90) is trials[2]  # none keeps utility: the best valid AUC
    assert pick(trials, floor=0.0) is trials[0]


def test_pick_refuses_an_e2urec_setting_whose_augmented_model_did_not_learn_the_forget_set():
    trials = [
        {"valid_auc": 0.80, "tune_jsd": 0.01, "aug_forget_loss": 0.12, "orig_forget_loss": 0.10},
        {"valid_auc": 0.80, "tune_jsd": 0.03, "aug_forget_loss": 0.09, "orig_forget_loss": 0.10},
    ]
    assert pick(trials, floor=0.78) is trials[1]


def test_bad_grid_is_refused():
    with pytest.raises(ValueError, match="lrs"):
        TuneConfig(lrs=(0.0,))
    with pytest.raises(ValueError, match="epochs"):
        TuneConfig(epochs=())


def test_tune_runs_the_same_grid_for_each_method_on_the_tune_half(tmp_path):
    methods = {"methods": ["retrain", "neggrad", "e2urec"], "workers": 2}  # trials side by side
    bench = Bench.from_dict(merge(preset("smoke"), methods))
    grid = TuneConfig(lrs=(1e-3, 3e-3), epochs=(1,))
    result = tune(bench, tmp_path, grid)
    assert json.loads((tmp_path / "tune.json").read_text()) == json.loads(json.dumps(result))
    assert set(result["trials"]) == set(result["chosen"]) == {"neggrad", "e2urec"}
    assert result["original_tune_jsd"] > 0  # the original is not Retrain: where methods start
    for method, trials in result["trials"].items():
        assert [(t["options"]["lr"], t["options"]["epochs"]) for t in trials] == [
            (1e-3, 1),
            (3e-3, 1),
        ]
        assert result["chosen"][method] in [t["options"] for t in trials]
    assert {"aug_forget_loss", "orig_forget_loss"} <= result["trials"]["e2urec"][0].keys()
    e2urec = result["trials"]["e2urec"][0]["options"]
    assert e2urec["aug_lr"] == e2urec["lr"] and e2urec["aug_epochs"] == e2urec["epochs"]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    tune_half = set(manifest["forgotten_halves"]["tune"])
    forget = real(load_splits(tmp_path / "data")["forget"])
    assert result["forget_tune_samples"] == sum(s.user in tune_half for s in forget) > 0


def test_tune_scores_retrain_once_and_looks_only_at_valid_and_the_tune_half(tmp_path, monkeypatch):
    bench = Bench.from_dict(merge(preset("smoke"), {"methods": ["retrain", "neggrad"]}))
    made, scored = [], []
    real_init, real_score = Judge.__init__, tune_module.score
    monkeypatch.setattr(Judge, "__init__", lambda self, *a: made.append(1) or real_init(self, *a))
    monkeypatch.setattr(
        tune_module,
        "score",
        lambda rec, xs, *a, **k: scored.append(xs) or real_score(rec, xs, *a, **k),
    )
    tune(bench, tmp_path, TuneConfig(lrs=(1e-3, 3e-3), epochs=(1,)))
    assert len(made) == 1  # one process, two grid points, one Judge
    splits = load_splits(tmp_path / "data")
    tune_half = set(
        json.loads((tmp_path / "data" / "manifest.json").read_text())["forgotten_halves"]["tune"]
    )
    allowed = [splits["valid"], [s for s in real(splits["forget"]) if s.user in tune_half]]
    # Retrain on the tune half, then the original and each trial on valid and the tune half:
    # never test, never the reported half
    assert len(scored) == 1 + 2 * 3 and all(xs in allowed for xs in scored)
    assert allowed[1] and all(any(xs == a for xs in scored) for a in allowed)


def test_tune_command_prints_the_chosen_options(tmp_path, capsys):
    out = tmp_path / "t"
    grid = tmp_path / "grid.yaml"
    grid.write_text("lrs: [0.003]\nepochs: [1]\n")
    args = ["tune", "--preset", "smoke", "--methods", "retrain,neggrad", "--grid", str(grid)]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("method_options:\n  neggrad:") and "lr: 0.003" in printed


def test_the_tune_trains_its_original_on_one_thread_as_the_bench_workers_do(tmp_path, monkeypatch):
    # One thread against two changes the float sums, so the original, at the demo's size
    bench = Bench.from_dict(merge(preset("smoke"), {"methods": ["retrain"], "workers": 2}))
    threads, real_setup = [], tune_module.setup
    monkeypatch.setattr(
        tune_module, "setup", lambda *a: threads.append(torch.get_num_threads()) or real_setup(*a)
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tune(bench, tmp_path, TuneConfig(lrs=(3e-3,), epochs=(1,)))
        assert threads == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
