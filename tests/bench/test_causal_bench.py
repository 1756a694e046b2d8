"""The bench on causal LMs: the stored bottom made once and read by every training; the SmolLM2
presets."""

from __future__ import annotations

import dataclasses

import pytest
import tiny_causal
from safetensors.torch import load_file
from tiny_causal import PROTOCOL, TRAIN

from e2urec.bench import Bench, preset
from e2urec.bench.run import setup as bench_setup
from e2urec.bench.run import unlearn as bench_unlearn
from e2urec.data import load_splits
from e2urec.model import backbone, frozen

one_thread = tiny_causal.one_thread
ml100k_raw = tiny_causal.ml100k_raw
data = tiny_causal.data
deep_llama_dir = tiny_causal.deep_llama_dir


def test_a_bench_stores_the_bottom_once_and_its_trainings_read_it(
    deep_llama_dir, ml100k_raw, tmp_path, monkeypatch, capsys
):
    """The bench computes the backbone's bottom states of every split once, in the data folder;
    the original, Retrain and SISA's shards read them (computing none), and the original's
    fingerprint hashes them."""
    config = dataclasses.replace(TRAIN, top_layers=2, loss_tokens="decision", select_by="auc")
    bench = Bench(
        dataset="ml-100k", raw=str(ml100k_raw), model=str(deep_llama_dir),
        methods=("retrain",), protocol=PROTOCOL, train=config,
    )  # fmt: skip
    computed = []
    fill = frozen.BottomStates.fill
    monkeypatch.setattr(
        frozen.BottomStates, "fill", lambda *a, **k: computed.append(fill(*a, **k)) or computed[-1]
    )
    run = bench_setup(bench, tmp_path)
    splits = load_splits(tmp_path / "data")
    stored = load_file(tmp_path / "data" / "bottom" / frozen.FILE)
    wanted = {frozen.key(s.input, s.output) for part in splits.values() for s in part}
    assert set(stored) == wanted and computed == [len(wanted), 0]  # the stage, the original
    bench_unlearn(run, "retrain", "retrain", None, config)
    bench_unlearn(run, "sisa", "sisa", {"shards": 2}, config)
    assert computed == [len(wanted), 0, 0, 0, 0]  # and Retrain, and each of the two shards
    assert backbone.read_meta(run.models["retrain"])["kind"] == "lora"
    # Other states (here: one entry fewer) are another input: the original is redone.
    frozen.drop_stored(tmp_path / "data" / "bottom" / frozen.FILE, splits["train"][:1])
    capsys.readouterr()
    bench_setup(bench, tmp_path)
    said = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'bottom'}: finished earlier" in said
    assert f"{tmp_path / 'original'}: config or inputs changed; redoing" in said
    assert computed[5:] == [1]  # the original computed the missing entry


@pytest.mark.parametrize("name", ["smollm", "smollm-gpu"])
def test_smollm_presets(name):
    bench = Bench.from_dict(preset(name), name)
    assert (bench.model, bench.dataset, bench.train.lora) == ("smollm2", "ml-100k", True)
    # What the format alone minimises neither trains nor selects the model.
    assert (bench.train.loss_tokens, bench.train.select_by) == ("decision", "auc")
    assert bench.train.warmup > 0 and bench.train.schedule == "linear"


def test_only_the_cpu_preset_freezes_a_bottom():
    assert Bench.from_dict(preset("smollm"), "smollm").train.top_layers > 0
    for name in ("smollm-gpu", "paper"):
        assert Bench.from_dict(preset(name), name).train.top_layers == 0, name
