"""Evaluation of a causal LM whose bottom is the backbone's: scored from the stored states."""

from __future__ import annotations

import dataclasses

import numpy as np
import tiny_causal
import torch
from tiny_causal import TRAIN

from e2urec.evals.evaluation import model_scorer
from e2urec.model import frozen, loader, score
from e2urec.model.train import train

one_thread = tiny_causal.one_thread
ml100k_raw = tiny_causal.ml100k_raw
data = tiny_causal.data
deep_llama_dir = tiny_causal.deep_llama_dir


def test_a_model_that_kept_the_backbone_bottom_is_scored_from_the_stored_states(
    deep_llama_dir, data, tmp_path, monkeypatch
):
    """The bench scores every row whose weights below the top layers equal the backbone's from
    the stored states (only the top runs): the same scores as at full depth (float32 states);
    a model whose bottom changed by one weight runs at full depth."""
    config = dataclasses.replace(TRAIN, top_layers=2, loss_tokens="decision", select_by="auc")
    train(deep_llama_dir, data["train"], data["valid"], tmp_path / "m", config)
    cache = tmp_path / "bottom.safetensors"
    frozen.store(str(deep_llama_dir), data["train"] + data["valid"], 2, "float32", cache)
    stored = frozen.StoredBottom(str(deep_llama_dir), 2, "float32", str(cache))
    samples = data["test"] + data["valid"]  # test: not stored, computed from the same bottom
    full = score(loader.load(tmp_path / "m"), samples)
    tops = []
    run = frozen.BottomStates.run
    monkeypatch.setattr(frozen.BottomStates, "run", lambda *a: tops.append(1) or run(*a))
    from_states = model_scorer(str(tmp_path / "m"), 16, stored)(samples, False)
    assert tops  # only the top layers ran
    np.testing.assert_allclose(from_states["log_odds"], full["log_odds"], atol=1e-4)
    assert (
        np.abs(full["log_odds"] - score(loader.load(deep_llama_dir), samples)["log_odds"]).max()
        > 1e-2
    )
    changed = loader.load(tmp_path / "m")
    with torch.no_grad():
        frozen.decoder(changed.model).layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    assert stored.states_for(changed) is None
    assert stored.states_for(loader.load(tmp_path / "m")) is not None
