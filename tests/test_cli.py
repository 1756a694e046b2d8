"""The command line: errors people see, and the train -> unlearn path on tiny data."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields

import pytest

from e2urec.cli import _protocol, build_parser, main
from e2urec.data import Protocol

TINY = ["tiny.vocab_size=400", "tiny.d_model=32", "tiny.d_ff=64", "tiny.heads=2"]
TINY += ["tiny.encoder_layers=1", "tiny.decoder_layers=1"]


def test_prepare_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["prepare", "--out", str(out), "--forget-ratio", "1.5"]) == 2
    assert "forget_ratio must be in (0, 1), got 1.5" in capsys.readouterr().err
    assert main(["prepare", "--out", str(out), "--dataset", "imaginary"]) == 2
    assert "unknown data set 'imaginary'" in capsys.readouterr().err
    assert not out.exists()


def test_every_protocol_field_is_a_prepare_flag_read_by_the_dataclass():
    args = build_parser().parse_args(["prepare", "--out", "d", "--min-history", "2"])
    assert {f.name for f in fields(Protocol)} <= set(vars(args))
    args = build_parser().parse_args(["prepare", "--out", "d", "--sample", "4,2,2", "--seed", "7"])
    protocol = _protocol(args)
    assert (protocol.sample, protocol.seed, protocol.history) == ((4, 2, 2), 7, Protocol().history)


def test_commands_other_than_prepare_start_without_the_data_engines():
    code = "import sys; from e2urec.cli import build_parser; build_parser(['status', '--help'])"
    code += "; print(sorted({'pandas', 'duckdb'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_prepare_help_keeps_how_each_protocol_value_is_written(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--sample TRAIN,VALID,TEST" in out and "--answers YES,NO" in out
    assert "default: all" in out and "None" not in out


def test_train_then_unlearn(tmp_path, data_dir, capsys):
    original = tmp_path / "original"
    args = ["train", "--data", str(data_dir), "--out", str(original), "--set", "epochs=1", *TINY]
    assert main(args) == 0
    report = json.loads((original / "train_report.json").read_text())
    assert set(report["test"]) == {"auc", "acc", "logloss"}
    assert (original / "base" / "tokenizer.json").exists()
    out = tmp_path / "e2urec"
    args = ["unlearn", "--data", str(data_dir), "--model", str(original), "--out", str(out)]
    args += ["--set", "epochs=2", "lora_rank=2", "lora_alpha=4", "batch_size=32"]
    assert main(args) == 0
    summary = json.loads((out / "unlearn_summary.json").read_text())
    assert summary["method"] == "e2urec" and (out / "adapter_config.json").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())  # what was built, not asked
    assert (adapter["r"], adapter["lora_alpha"]) == (2, 4)


def test_unlearn_refuses_unknown_method_option(tmp_path, data_dir, trained, capsys):
    args = ["unlearn", "--data", str(data_dir), "--model", trained["original"]]
    args += ["--out", str(tmp_path / "x"), "--set", "alpah=2"]
    assert main(args) == 2
    assert "unknown option(s) alpah" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_commands_that_train_keep_freed_memory_and_the_service_does_not(tmp_path, monkeypatch):
    import e2urec.memory

    calls = []
    monkeypatch.setattr(e2urec.memory, "keep_freed_memory", lambda: calls.append(1))
    missing = str(tmp_path / "missing")
    assert main(["train", "--data", missing, "--out", str(tmp_path / "o")]) == 2
    assert calls == [1]
    assert main(["serve", "--deploy", missing]) == 2
    assert calls == [1]
