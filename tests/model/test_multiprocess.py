"""Two processes under `accelerate launch` (gloo on CPU) train the same model as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2urec.cli import main
from e2urec.model import backbone, loader
from e2urec.model.train import TrainConfig, train


def _without_dropout(base: str, out: Path) -> str:
    """Dropout draws differ between processes; without it the two runs must agree."""
    rec = loader.load(base)
    rec.model.config.dropout_rate = 0.0
    backbone.save(rec, rec.model, out, base=None)
    return str(out)


def test_two_processes_train_the_same_model_as_one(data_dir, splits, trained, tmp_path):
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists():
        pytest.skip("accelerate's launcher is not installed")
    base = _without_dropout(trained["base"], tmp_path / "base")
    config = TrainConfig(epochs=2, patience=2, lr=3e-3, batch_size=16, eval_batch_size=32)
    train(base, splits["train"], splits["valid"], tmp_path / "one", config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    # On a machine without GPUs, accelerate's multi-GPU launcher starts CPU processes on gloo.
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "e2urec.cli", "train", "--data", str(data_dir), "--model", base]
    command += ["--out", str(tmp_path / "two"), "--set", "epochs=2", "patience=2", "lr=0.003"]
    command += ["batch_size=16", "eval_batch_size=32"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    one = loader.load(tmp_path / "one").model.state_dict()
    two = loader.load(tmp_path / "two").model.state_dict()
    base_state = loader.load(base).model.state_dict()
    assert any(not torch.equal(two[k], base_state[k]) for k in two)  # it did train
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    report = json.loads((tmp_path / "two" / "train_report.json").read_text())
    # Two lone processes, each on all the data, would also match `one`: the report says
    # whether they trained as one group.
    assert report["processes"] == 2
    assert report["epochs_run"] == 2 and "test" in report  # written once, by the main process
    assert run.stdout.count('"trainable_params"') == 1  # and printed once


def test_other_commands_refuse_several_processes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["bench", "--preset", "smoke", "--out", str(tmp_path / "run")]) == 2
    assert "only `e2urec train` shares its work" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
