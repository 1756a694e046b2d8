"""The bench end to end on the smoke preset: files, fields, sequential requests, seeds, plots."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from e2urec.api import forget
from e2urec.bench import Bench, aggregate, merge, paired_over_seeds, preset, run_bench
from e2urec.bench.over_seeds import over_seeds
from e2urec.bench.plots import plot_results
from e2urec.bench.report import COLUMNS, fmt, markdown_table, paired_rows, text_table
from e2urec.cli import main
from e2urec.data import load_splits
from e2urec.data.canaries import real

FIELDS = ["jsd", "sym_kl", "l2", "jsd_yes_no", "mia_auc", "seconds", "trainable_params"]
FIELDS += ["peak_rss_mb", "privleak", "canary_exposure", "canary_retained", "threshold"]
FIELDS += ["forget_quality", "canary_exposure_ci", "canary_retained_ci"]
TRAINED = ["jsd_ci", "below_original", "above_floor"]
PNG = b"\x89PNG\r\n\x1a\n"


def smoke(**extra) -> Bench:
    return Bench.from_dict(merge(preset("smoke"), extra), where="test")


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, run_bench(smoke(sequential=2, requests=1), out)
    finally:
        torch.set_num_threads(before)


def test_results_have_every_field_for_every_row(sequential_run):
    out, results = sequential_run
    on_disk = json.loads((out / "results.json").read_text())
    methods = on_disk["config"]["methods"]
    assert list(on_disk["methods"]) == [
        "original",
        "retrain",
        "retrain_b",
        *methods[1:],
        "history_mean",
    ]
    assert {"config", "versions", "git"} <= on_disk.keys()
    for name, row in on_disk["methods"].items():
        assert set(row["forget"]) == {"auc", "acc", "acc_05", "logloss"}, name
        assert set(row["test"]) == {"auc", "auc_ci", "acc", "acc_05", "logloss"}, name
        low, high = row["test"]["auc_ci"]
        assert low <= row["test"]["auc"] <= high, name
        assert set(FIELDS) <= row.keys(), name
        assert 0 <= row["mia_auc"] <= 1, name
        if name != "history_mean":
            assert set(TRAINED) <= row.keys() and row["jsd"] >= 0, name
            # One reported user here: no interval, and no verdict can be sure.
            assert on_disk["forget_users"] == 1 and row["jsd_ci"] is None, name
            assert not row["below_original"] and not row["above_floor"], name
    assert on_disk["methods"]["retrain"]["jsd"] == 0
    assert on_disk["methods"]["retrain_b"]["jsd"] > 0  # another seed: the floor is not Retrain
    assert on_disk["methods"]["retrain"]["privleak"] == 0
    assert on_disk["methods"]["retrain"]["forget_quality"] == 1.0  # Retrain against itself
    assert 0 <= on_disk["methods"]["retrain_b"]["forget_quality"] <= 1
    # forget metrics on the reported (eval) half's real samples only: the tune saw the other half
    halves = json.loads((out / "data" / "manifest.json").read_text())["forgotten_halves"]
    forget = real(load_splits(out / "data")["forget"])
    assert 0 < on_disk["forget_reported"] == sum(s.user in halves["eval"] for s in forget)
    assert any(s.user in halves["tune"] for s in forget)
    assert on_disk["methods"]["history_mean"]["jsd"] is None
    assert on_disk["methods"]["original"]["epochs_run"] >= 1
    requests = on_disk["requests"]
    assert requests["method"] == "e2urec" and requests["n"] == 1
    assert 0 < requests["p50_seconds"] <= requests["p95_seconds"]
    assert requests["retrain_seconds"] == on_disk["methods"]["retrain"]["seconds"]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == list(on_disk["methods"])
    assert {"MIA AUC", "seconds"} <= rows[0].keys()
    assert (out / "results.md").read_text() == markdown_table(results)
    base = json.loads((out / "original" / "train_report.json").read_text())["base"]
    assert (out / "original" / base).resolve() == (out / "base").resolve()  # for `forget`


def test_table_shows_seconds_with_one_decimal(sequential_run):
    _, results = sequential_run
    table = text_table(results).splitlines()
    at = [c for c, _ in COLUMNS].index("seconds") + 1
    rows = results["methods"]
    for line in table[2 : 2 + len(rows)]:
        cells = line.split()  # one seed: no "±", so no spaces inside a cell
        seconds = rows[cells[0]]["seconds"]
        assert cells[at] == ("-" if seconds is None else f"{seconds:.1f}")
    assert "Noise floor: retrain_b" in table[2 + len(rows)]
    aug, orig = (fmt(rows["e2urec"][k]) for k in ("aug_forget_loss", "orig_forget_loss"))
    assert f"forget-set loss {aug} against the original's {orig}" in text_table(results)


# The report's columns, read straight from a results row: the tables must show these numbers
SHOWN = {
    "test AUC": lambda r: r["test"]["auc"],
    "test ACC": lambda r: r["test"]["acc"],
    "ACC@0.5": lambda r: r["test"]["acc_05"],
    "test LogLoss": lambda r: r["test"]["logloss"],
    "forget AUC": lambda r: r["forget"]["auc"],
    "forget LogLoss": lambda r: r["forget"]["logloss"],
    "JSD": lambda r: r["jsd"],
    "sym-KL": lambda r: r["sym_kl"],
    "L2": lambda r: r["l2"],
    "JSD Yes/No": lambda r: r["jsd_yes_no"],
    "forget quality": lambda r: r["forget_quality"],
    "canary exp.": lambda r: r["canary_exposure"],
    "canary kept": lambda r: r["canary_retained"],
    "MIA AUC": lambda r: r["mia_auc"],
    "PrivLeak": lambda r: r["privleak"],
    "seconds": lambda r: r["seconds"],
    "peak RSS MB": lambda r: r["peak_rss_mb"],
}


def _shows(cell: str, value) -> bool:
    """A CSV cell holds `value` (empty for None; NaN, e.g. an AUC over one class, as nan)."""
    if value is None:
        return cell == ""
    return float(cell) == value or (np.isnan(value) and np.isnan(float(cell)))


def test_csv_and_markdown_show_each_rows_numbers_in_their_columns(sequential_run):
    out, results = sequential_run
    with (out / "results.csv").open() as fh:
        csv_rows = {r["method"]: r for r in csv.DictReader(fh)}
    lines = (out / "results.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    md_rows = {
        c[0]: c
        for c in (
            [x.strip() for x in ln.strip("|").split("|")]
            for ln in lines[2 : 2 + len(results["methods"])]
        )
    }
    for name in ("original", "retrain_b", "e2urec"):
        row = results["methods"][name]
        for title, read in SHOWN.items():
            value = read(row)
            shown = csv_rows[name][title]
            assert _shows(shown, value), (name, title)
            decimals = 1 if title in ("seconds", "peak RSS MB") else 4
            assert md_rows[name][header.index(title)] == fmt(value, decimals), (name, title)


def test_sequential_requests_forget_the_users_step_by_step(sequential_run):
    out, results = sequential_run
    seq = results["sequential"]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert seq["steps"] == 2 and sum(seq["requests"], []) == manifest["forgotten_users"]
    assert list(seq["methods"]) == list(results["config"]["methods"])
    for steps in seq["methods"].values():
        assert [s["step"] for s in steps] == [1, 2]
        assert steps[0]["forgotten_samples"] < steps[1]["forgotten_samples"]
        assert steps[1]["forgotten_samples"] == manifest["counts"]["forget"]
        for s in steps:
            assert {"test", "forget", "jsd", "mia_auc", "seconds"} <= s.keys()
    assert all(s["jsd"] == 0 for s in seq["methods"]["retrain"])
    # Each step builds on the previous one: the second adapter sits on the first.
    meta = json.loads((out / "sequential" / "e2urec" / "step-2" / "e2urec.json").read_text())
    assert meta["base"].endswith("step-1")
    assert "Successive deletion requests" in (out / "results.md").read_text()


def test_plots_are_written(sequential_run, tmp_path):
    out, results = sequential_run
    for name in ("results.png", "sequential.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    no_retrain = {"methods": {k: {**v, "jsd": None} for k, v in results["methods"].items()}}
    assert plot_results(no_retrain, tmp_path / "x.png").read_bytes().startswith(PNG)


def test_every_row_of_a_full_bench_has_its_own_colour():
    from e2urec.bench.plots import _colors

    rows = ["original", "retrain", "retrain_b", *[f"method{i}" for i in range(7)], "history_mean"]
    assert len(set(_colors(rows).values())) == len(rows)


def test_seeds_move_data_and_init_and_report_mean_std_and_interval(tmp_path):
    bench = smoke(seeds=[0, 1], methods=["retrain", "e2urec"], workers=2)
    results = run_bench(bench, tmp_path)
    assert results["seeds"] == [0, 1] and results["per_seed"].keys() == {"0", "1"}
    for name in ("original", "retrain", "e2urec"):
        per_seed = [results["per_seed"][s]["methods"][name]["test"]["auc"] for s in ("0", "1")]
        assert results["methods"][name]["test"]["auc"] == pytest.approx(np.mean(per_seed))
        std = results["std"]["methods"][name]["test"]["auc"]
        assert std == pytest.approx(np.std(per_seed, ddof=1))
        assert results["ci95"]["methods"][name]["test"]["auc"] == pytest.approx(
            12.706 * std / 2**0.5, rel=1e-3
        )
    config = json.loads((tmp_path / "seed-1" / "methods" / "e2urec" / "unlearn_report.json").read_text())  # fmt: skip
    assert config["config"]["seed"] == 1
    manifests = [json.loads((tmp_path / f"seed-{s}" / "data" / "manifest.json").read_text()) for s in (0, 1)]  # fmt: skip
    assert manifests[0]["forgotten_users"] != manifests[1]["forgotten_users"]
    inits = [json.loads((tmp_path / f"seed-{s}" / "base" / "e2urec.json").read_text()) for s in (0, 1)]  # fmt: skip
    assert [i["size"]["seed"] for i in inits] == [0, 1]
    assert " ± " in text_table(results)
    with (tmp_path / "results.csv").open() as fh:
        csv_rows = {r["method"]: r for r in csv.DictReader(fh)}
    for name in ("original", "e2urec"):
        std = results["std"]["methods"][name]
        for title, read in SHOWN.items():
            if read(std) is not None:
                assert _shows(csv_rows[name][f"{title} std"], read(std)), (name, title)
    assert results["paired"]["e2urec"]["jsd - retrain_b"]["n"] == 2
    for name in ("original", "e2urec"):  # intervals over the seeds, not averaged endpoints
        row, half = results["methods"][name], results["ci95"]["methods"][name]["jsd"]
        assert row["jsd_ci"] == pytest.approx([max(0.0, row["jsd"] - half), row["jsd"] + half])
        half = results["ci95"]["methods"][name]["test"]["auc"]
        auc = row["test"]["auc"]
        assert row["test"]["auc_ci"] == pytest.approx([max(0, auc - half), min(1, auc + half)])
    below = results["paired"]["e2urec"]["jsd - original"]["high"] < 0
    assert results["methods"]["e2urec"]["below_original"] is below
    assert "## Paired over seeds" in (tmp_path / "results.md").read_text()


def test_one_seed_spreads_rows_over_workers_and_a_rerun_reuses_every_stage(tmp_path, capsys):
    bench = smoke(methods=["retrain", "neggrad"], workers=2)
    first = run_bench(bench, tmp_path)
    assert {"original", "retrain", "retrain_b", "neggrad", "history_mean"} <= first[
        "methods"
    ].keys()
    said = capsys.readouterr().err
    for row in ("original", "retrain", "retrain_b", "neggrad"):
        # evaluated in a worker: this process's final pass found it finished
        assert f"{tmp_path / 'eval' / row}: finished earlier" in said, row
    again = run_bench(replace(bench, workers=1), tmp_path)
    said = capsys.readouterr().err
    assert "redoing" not in said and said.count("reused") >= 9  # data, base, 4 rows x 2 stages
    for row in ("original", "retrain_b", "neggrad"):
        assert again["methods"][row]["jsd"] == first["methods"][row]["jsd"]


def test_aggregate_averages_numbers_and_keeps_the_rest():
    trees = [{"a": 1.0, "b": {"c": 2, "name": "x"}, "n": None}, {"a": 3.0, "b": {"c": 2, "name": "x"}, "n": None}]  # fmt: skip
    mean, std = aggregate(trees)
    assert mean == {"a": 2.0, "b": {"c": 2, "name": "x"}, "n": None}
    assert std == {"a": pytest.approx(np.std([1.0, 3.0], ddof=1)), "b": {"c": 0.0}}


def test_paired_differences_cancel_what_a_seed_does_to_every_row():
    # Seeds move both rows by a lot (0.1 vs 0.3 JSD); the method is 0.02 below the original in
    # each seed: unpaired intervals would overlap, the paired one excludes 0.
    def seed(orig, shift):
        return {
            "original": {"jsd": orig, "test": {"auc": 0.7}},
            "e2urec": {"jsd": orig - shift, "test": {"auc": 0.7}},
            "history_mean": {"test": {"auc": 0.8}},
        }

    seeds = [seed(0.1, 0.02), seed(0.3, 0.021), seed(0.2, 0.019)]
    paired = paired_over_seeds(seeds)
    diff = paired["e2urec"]["jsd - original"]
    assert diff["mean"] == pytest.approx(-0.02) and diff["high"] < 0
    assert diff["n"] == 3 and "jsd - retrain_b" not in paired["e2urec"]  # no floor row here
    assert "original" not in paired  # a row is never compared with itself
    assert "jsd - original" not in paired["history_mean"]  # no JSD: nothing to pair
    header, rows = paired_rows({"paired": paired})
    assert header[1:] == ["JSD - original", "test AUC - original"]
    assert rows[0][1].endswith("*")  # beyond the seed spread
    assert not rows[0][2].endswith("*")  # test AUC: the same in every seed, interval [0, 0]


def test_with_seeds_intervals_and_verdicts_are_taken_over_the_seeds():
    def seed(jsd, low, high):
        row = {"jsd": jsd, "jsd_ci": [low, high], "below_original": True, "above_floor": True}
        return {"original": {"jsd": 0.05, "jsd_ci": [0.04, 0.06]}, "e2urec": row}

    # Each seed's sample interval is narrow and below the original; the seeds disagree.
    seeds = [seed(0.01, 0.009, 0.011), seed(0.09, 0.089, 0.091), seed(0.02, 0.019, 0.021)]
    mean, std = aggregate(seeds)
    results = {"methods": mean, "std": {"methods": std}}
    results["paired"] = paired_over_seeds(seeds)
    over_seeds(results, 3)
    row, half = results["methods"]["e2urec"], 4.303 * np.std([0.01, 0.09, 0.02], ddof=1) / 3**0.5
    assert row["jsd_ci"] == pytest.approx([0.0, 0.04 + half], rel=1e-3)  # clipped at 0
    assert row["below_original"] is False  # in every seed, but not beyond the seeds' spread
    assert row["above_floor"] is None  # no retrain_b row to compare with


def test_the_study_is_the_demo_over_seeds():
    demo, study = preset("demo"), preset("study")
    assert "extends" not in study
    assert [m for m in study["methods"] if m != "apa"] == demo["methods"]  # APA added
    extra = {"seeds": [0, 1, 2, 3, 4], "requests": 0, "methods": study["methods"]}
    assert study == merge(demo, {**extra, "method_options": {"apa": {"shards": 4}}})


def test_bench_refuses_more_requests_than_forgotten_users(tmp_path, capsys):
    code = main(["bench", "--preset", "smoke", "--sequential", "99", "--out", str(tmp_path)])
    assert code == 2 and "cannot split" in capsys.readouterr().err
    assert not (tmp_path / "original").exists()


def test_forget_retrains_a_bench_original_from_its_recorded_backbone(sequential_run, tmp_path):
    out, _ = sequential_run
    user = json.loads((out / "data" / "manifest.json").read_text())["forgotten_users"][0]
    report = forget(out / "data", out / "original", tmp_path / "new", "retrain", users=[user])
    assert report["removed"]["users"] == [user] and report["removed"]["samples"] > 0
    assert (tmp_path / "new" / "forget_report.json").exists()


def test_a_bench_started_again_reuses_finished_stages_and_redoes_what_changed(tmp_path, capsys):
    def markers():
        return {str(p.parent.relative_to(tmp_path)): p.stat().st_mtime_ns for p in tmp_path.rglob(".stage.json")}  # fmt: skip

    bench = smoke(methods=["retrain", "neggrad"])
    first = run_bench(bench, tmp_path)
    done = markers()
    assert {"data", "base", "original", "methods/neggrad", "eval/neggrad"} <= done.keys()
    capsys.readouterr()
    again = run_bench(bench, tmp_path)
    assert markers() == done and "reused" in capsys.readouterr().err
    assert again["methods"] == json.loads(json.dumps(first["methods"]))
    # An interrupted stage (no marker) and a changed option are redone, and only they: the
    # redone Retrain has the same config and inputs, so its evaluation stands.
    (tmp_path / "methods" / "retrain_b" / ".stage.json").unlink()
    run_bench(smoke(methods=["retrain", "neggrad"], method_options={"neggrad": {"lr": 0.01}}), tmp_path)  # fmt: skip
    now = markers()
    redone = {k for k in done if now.get(k) != done[k]}
    assert redone == {"methods/retrain_b", "methods/neggrad", "eval/neggrad"}


def test_workers_leave_when_the_bench_that_started_them_is_killed(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(
        "import os, time\n"
        "from e2urec.bench.pool import worker_pool\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(1)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n"
    )
    bench = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(bench.stdout.readline())
    assert running(worker)
    bench.kill()  # SIGKILL: nothing in the bench can clean up
    bench.wait()
    deadline = time.monotonic() + 30
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(worker)


WARN_IN_A_WORKER = """
import warnings
from e2urec.bench.pool import worker_pool

def shown():
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning)
    return len(seen)

if __name__ == "__main__":
    with worker_pool(1) as pool:
        print(pool.submit(shown).result())
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    with worker_pool(1) as pool:
        print(pool.submit(shown).result())
"""


def test_workers_keep_the_warning_filters_of_the_process_that_started_them(tmp_path):
    script = tmp_path / "warn.py"
    script.write_text(WARN_IN_A_WORKER)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "0"]  # shown before the caller filters it, not after


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for a reaper that never comes)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_rows_that_train_from_the_backbone_run_beside_the_original(monkeypatch):
    import e2urec.bench.run as bench_module

    retrain_started, log = threading.Event(), []

    def original_job(bench, out, seed):
        log.append("original start")
        log.append(("original end", retrain_started.wait(10)))  # True: Retrain ran meanwhile

    def row_job(bench, out, seed, row, original):
        if row == "retrain":
            retrain_started.set()
        log.append((row, original))

    monkeypatch.setattr(bench_module, "_setup_job", lambda *a: log.append("setup"))
    monkeypatch.setattr(bench_module, "_original_job", original_job)
    monkeypatch.setattr(bench_module, "_row_job", row_job)
    bench = smoke(methods=["retrain", "neggrad", "sisa", "e2urec"])
    with ThreadPoolExecutor(2) as pool:
        bench_module._schedule(pool, bench, {None: Path("unused")})
    assert log[0] == "setup" and ("original end", True) in log
    for row in ("retrain", "retrain_b", "sisa"):  # from the backbone: no original needed
        assert (row, False) in log
    end = log.index(("original end", True))
    for row in ("neggrad", "e2urec", "original"):  # from the original: only once it is there
        assert log.index((row, True)) > end
