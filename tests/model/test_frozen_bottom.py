"""A frozen bottom on a tiny 4-layer Llama: only the top layers train, from stored bottom states
equal to the full forward; states saved, reused, and refused where they do not fit."""

from __future__ import annotations

import dataclasses

import pytest
import tiny_causal
import torch
from safetensors.torch import load_file
from tiny_causal import TRAIN, byte_level_tokenizer
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from e2urec.model import encode, forward, frozen, gguf, loader, score
from e2urec.model.train import train

one_thread = tiny_causal.one_thread
ml100k_raw = tiny_causal.ml100k_raw
data = tiny_causal.data
deep_llama_dir = tiny_causal.deep_llama_dir
deep_llama = tiny_causal.deep_llama


def test_only_the_top_layers_adapters_train(deep_llama):
    rec, net = deep_llama
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    layers = {int(n.split(".layers.")[1].split(".")[0]) for n in trainable}
    assert layers == {2, 3} and all(".lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-2)])
def test_frozen_bottom_forward_equals_the_full_forward(deep_llama, data, dtype, tolerance):
    rec, net = deep_llama
    samples = data["train"][:9]
    states = frozen.BottomStates(rec, frozen.split(net, 2), dtype)
    assert states.fill(net, samples, batch_size=4) == len(samples)
    assert states.fill(net, samples) == 0  # computed once
    net.eval()
    with torch.no_grad():
        full = forward(rec, net, encode(rec, samples))
        # Another batch than the one the states were computed in: padding differs.
        top = states.forward(net, samples)
    assert torch.equal(full.targets, top.targets) and torch.equal(full.first, top.first)
    torch.testing.assert_close(top.logits, full.logits, atol=tolerance, rtol=tolerance)
    # The adapters move the output far more than the stored states' rounding does.
    with torch.no_grad(), net.disable_adapter():
        plain = forward(rec, net, encode(rec, samples)).logits
    error = (top.logits - full.logits).abs().max()
    assert (plain - full.logits).abs().max() > 10 * error


def test_frozen_bottom_gradients_equal_the_full_ones(deep_llama, data):
    rec, net = deep_llama
    samples = data["train"][:6]
    states = frozen.BottomStates(rec, frozen.split(net, 2), "float32")
    states.fill(net, samples)
    net.train()

    def grads(out):
        net.zero_grad()
        torch.nn.functional.cross_entropy(out.logits, out.targets).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}

    full = grads(forward(rec, net, encode(rec, samples)))
    top = grads(states.forward(net, samples))
    assert full.keys() == top.keys()
    for name in full:
        assert full[name].abs().max() > 0, name
        torch.testing.assert_close(top[name], full[name], atol=1e-5, rtol=1e-4)


def test_frozen_bottom_keeps_each_layers_attention_kind(data, tmp_path):
    """Gemma 3 mixes sliding-window and full layers, each kind with its own rotary base, read
    from config.layer_types by position: the top run alone must still give each layer its own."""
    tokenizer = byte_level_tokenizer([s.input for s in data["train"]])
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=8,  # far shorter than the prompts
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    gguf.save_plain(Gemma3ForCausalLM(config), tokenizer, tmp_path / "gemma", {"kind": "full"})
    rec = loader.load(tmp_path / "gemma")
    net = frozen.add_top_lora(rec.model, 2, rank=4, alpha=8, dropout=0.0)
    samples = data["train"][:6]
    states = frozen.BottomStates(rec, frozen.split(net, 2), "float32")
    states.fill(net, samples)
    net.eval()
    with torch.no_grad():
        full = forward(rec, net, encode(rec, samples))
        top = states.forward(net, samples)
    torch.testing.assert_close(top.logits, full.logits, atol=1e-5, rtol=1e-5)
    assert rec.model.config.layer_types == ["sliding_attention"] * 3 + ["full_attention"]


def test_bottom_states_save_load_and_drop(deep_llama, data, tmp_path):
    rec, net = deep_llama
    samples = data["train"][:5]
    states = frozen.BottomStates(rec, 2)
    states.fill(net, samples)
    states.fill(
        net, samples[:2], answers=["No." if s.output == "Yes." else "Yes." for s in samples[:2]]
    )
    assert len(states) == 7
    states.save(tmp_path / "bottom.safetensors")
    again = frozen.BottomStates(rec, 2).load(tmp_path / "bottom.safetensors")
    assert again.states.keys() == states.states.keys()
    assert all(torch.equal(again.states[k], states.states[k]) for k in states.states)
    assert again.drop(samples[:2]) == 4 and len(again) == 3  # both answers of each
    with pytest.raises(ValueError, match="below layer 2, not of .* below layer 3"):
        frozen.BottomStates(rec, 3).load(tmp_path / "bottom.safetensors")


def test_training_from_a_frozen_bottom(deep_llama_dir, data, tmp_path):
    """train() with top_layers: an adapter on the top layers only, whose full-depth scores
    (the saved adapter merged, as every later stage loads it) are those it was selected by."""
    config = dataclasses.replace(
        TRAIN, epochs=2, patience=2, top_layers=2, loss_tokens="decision", select_by="auc"
    )
    out = tmp_path / "m"
    report = train(deep_llama_dir, data["train"], data["valid"], out, config)
    saved = load_file(out / "adapter_model.safetensors")
    assert {int(k.split(".layers.")[1].split(".")[0]) for k in saved} == {2, 3}
    assert all(t.abs().max() > 0 for k, t in saved.items() if "lora_B" in k)  # trained
    kept = report["history"][report["best_epoch"] - 1]
    full_depth = score(loader.load(out), data["valid"])
    assert full_depth["loss"].mean() == pytest.approx(kept["valid_decision_loss"], rel=1e-2)
    base = score(loader.load(deep_llama_dir), data["valid"])
    assert abs(base["loss"].mean() - full_depth["loss"].mean()) > 1e-2
    with pytest.raises(ValueError, match="top_layers needs lora"):
        dataclasses.replace(config, lora=False)


def test_training_reuses_stored_bottom_states(deep_llama_dir, data, tmp_path):
    """A second training run reads the states the first one stored, adds nothing, and trains
    the same as from states it computes itself."""
    config = dataclasses.replace(TRAIN, top_layers=2, loss_tokens="decision", select_by="auc")
    cache = tmp_path / "bottom.safetensors"
    first = train(deep_llama_dir, data["train"], data["valid"], tmp_path / "a", config, cache)
    stored = load_file(cache)
    assert len(stored) == len({(s.input, s.output) for s in data["train"] + data["valid"]})
    written = cache.stat().st_mtime_ns
    again = train(deep_llama_dir, data["train"], data["valid"], tmp_path / "b", config, cache)
    assert cache.stat().st_mtime_ns == written
    assert again["history"] == first["history"]
    fresh = train(deep_llama_dir, data["train"], data["valid"], tmp_path / "c", config)
    assert fresh["history"] == first["history"]


def test_frozen_bottom_refuses_what_it_cannot_split(deep_llama, trained):
    rec, _ = deep_llama
    with pytest.raises(ValueError, match=r"top_layers must be in \[1, 4\]"):
        frozen.split(rec.model, 5)
    t5 = loader.load(trained["base"])
    with pytest.raises(ValueError, match="decoder-only"):
        frozen.split(t5.model, 1)
    with pytest.raises(ValueError, match="causal LM"):
        frozen.BottomStates(t5, 1)


def test_stored_states_refuse_a_model_with_other_answer_words(deep_llama_dir, data, tmp_path):
    """States hold the answer words' tokens under the label's key: a model answering in other
    words is refused, not scored from inputs it never reads."""
    cache = tmp_path / "bottom.safetensors"
    frozen.store(str(deep_llama_dir), data["valid"], 2, "float32", cache)
    rec = loader.load(deep_llama_dir)
    frozen.BottomStates(rec, frozen.split(rec.model, 2), "float32").load(cache)
    other = loader.load(deep_llama_dir, answers=("Sure.", "Nope."))
    with pytest.raises(ValueError, match="answered"):
        frozen.BottomStates(other, frozen.split(other.model, 2), "float32").load(cache)
