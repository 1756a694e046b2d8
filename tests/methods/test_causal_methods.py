"""Every unlearning method on a causal LM (a tiny Llama), and E2URec on a top-layers original."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tiny_causal
from safetensors.torch import load_file
from tiny_causal import METHOD_OPTIONS, TRAIN

from e2urec.methods import METHODS, Task, get_method
from e2urec.model import backbone, encode, forward, frozen, loader, score
from e2urec.model.train import train

one_thread = tiny_causal.one_thread
ml100k_raw = tiny_causal.ml100k_raw
data = tiny_causal.data
llama_dir = tiny_causal.llama_dir
original = tiny_causal.original
deep_llama_dir = tiny_causal.deep_llama_dir


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_on_a_causal_lm(name, original, llama_dir, data, tmp_path):
    task = Task(
        str(original),
        data["retain"],
        data["forget"],
        data["valid"],
        tmp_path / name,
        base=str(llama_dir),
        train_config=TRAIN,
    )
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    method = get_method(name, {k: v for k, v in METHOD_OPTIONS.items() if k in fields})
    result = method.unlearn(task)
    assert result.trainable_params > 0
    if getattr(method, "lora", False):  # E2URec: an adapter on the frozen original
        assert backbone.read_meta(result.model)["kind"] == "lora"
    after = score(loader.load(result.model), data["forget"])["p_yes"]
    before = score(loader.load(original), data["forget"])["p_yes"]
    assert np.isfinite(after).all() and not np.allclose(after, before)


def test_e2urec_on_a_top_layers_original_runs_from_its_stored_bottom(
    deep_llama_dir, original, data, tmp_path, monkeypatch
):
    """An original tuned on its top 2 layers from stored (float32) states: E2URec's adapters go
    on those layers, its passes run from the stored states (computing none), and it unlearns as
    the same adapters would at full depth. The chain of adapters still shares the backbone's
    bottom; a full-depth adapter shares none."""
    config = dataclasses.replace(TRAIN, top_layers=2, loss_tokens="decision", select_by="auc")
    config.bottom_dtype = "float32"  # not offered to users; here it makes the two paths agree
    cache = tmp_path / "bottom.safetensors"
    top = tmp_path / "original"
    train(deep_llama_dir, data["train"], data["valid"], top, config, cache)
    calls = {"fill": [], "forward": 0}
    fill, states_forward = frozen.BottomStates.fill, frozen.BottomStates.forward

    def counted_forward(*a, **k):
        calls["forward"] += 1
        return states_forward(*a, **k)

    monkeypatch.setattr(
        frozen.BottomStates, "fill", lambda *a, **k: calls["fill"].append(fill(*a, **k)) or 0
    )
    monkeypatch.setattr(frozen.BottomStates, "forward", counted_forward)
    options = {k: METHOD_OPTIONS[k] for k in ("lr", "aug_lr", "batch_size", "lora_rank")}
    options.update(epochs=2, lora_alpha=8, lora_dropout=0.0)

    def unlearn(out):
        task = Task(
            str(top), data["retain"], data["forget"], data["valid"], tmp_path / out,
            base=str(deep_llama_dir), train_config=config, bottom_cache=str(cache),
        )  # fmt: skip
        return get_method("e2urec", options).unlearn(task)

    result = unlearn("e2urec")
    assert calls["fill"] == [0] and calls["forward"] > 0  # states read, none computed
    assert result.info["adapted_layers"] == [2, 3]
    # Tuned on the forget set's decision tokens, as the original was trained: lower loss there.
    assert result.info["aug_forget_loss"] < result.info["orig_forget_loss"]
    saved = load_file(tmp_path / "e2urec" / "adapter_model.safetensors")
    assert {int(k.split(".layers.")[1].split(".")[0]) for k in saved} == {2, 3}
    after = score(loader.load(result.model), data["forget"])["p_yes"]
    assert not np.allclose(after, score(loader.load(top), data["forget"])["p_yes"])
    # The same adapters trained at full depth: ids in, every layer run (teachers and student).
    monkeypatch.setattr(
        frozen.BottomStates, "inputs", lambda self, s, answers=None: encode(self.rec, s, answers)
    )
    monkeypatch.setattr(
        frozen.BottomStates, "run", lambda self, model, batch: forward(self.rec, model, batch)
    )
    full = score(loader.load(unlearn("full-depth").model), data["forget"])["p_yes"]
    assert np.allclose(after, full, atol=1e-4)
    base = str(deep_llama_dir)
    assert frozen.bottom_source(result.model, 2) == frozen.bottom_source(top, 2)
    assert Path(frozen.bottom_source(top, 2)).resolve() == Path(base).resolve()
    assert frozen.bottom_source(top, 3) is None  # a bottom of layers 0-2 holds its layer-2 adapter
    assert frozen.bottom_source(original, 2) is None  # the full-depth LoRA original
