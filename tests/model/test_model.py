"""Scoring by hand, training a few steps, teachers, and config handling."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from e2urec.config import from_dict, override
from e2urec.maths import kl_rows
from e2urec.methods.teacher import Teacher, model_outputs
from e2urec.model import backbone, loader, score
from e2urec.model.scoring import MAX_LENGTH, encode, forward, token_ids
from e2urec.model.train import TrainConfig


def test_score_matches_a_hand_computation(trained, splits):
    rec = loader.load(trained["original"])
    sample = splits["test"][0]
    ids = rec.tokenizer(sample.input, return_tensors="pt")["input_ids"]
    start = torch.tensor([[rec.model.config.decoder_start_token_id]])
    with torch.no_grad():
        logits = rec.model(input_ids=ids, decoder_input_ids=start).logits[0, 0]
    yes, no = logits[rec.yes_id].item(), logits[rec.no_id].item()
    by_hand = math.exp(yes) / (math.exp(yes) + math.exp(no))
    batched = score(rec, splits["test"][:5], batch_size=2)["p_yes"]
    assert batched[0] == pytest.approx(by_hand, rel=1e-4)


def test_answer_tokens_are_distinct_words(trained):
    rec = loader.load(trained["original"])
    assert rec.tokenizer.convert_ids_to_tokens([rec.yes_id, rec.no_id]) == ["Yes", "No"]


def test_training_writes_a_loadable_model_and_report(trained, splits):
    report = json.loads((Path(trained["original"]) / "train_report.json").read_text())
    assert report["best_epoch"] == 1 and report["trainable_params"] > 0
    assert math.isfinite(report["history"][0]["valid_loss"])
    base = loader.load(trained["base"]).model.state_dict()
    tuned = loader.load(trained["original"]).model.state_dict()
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert len(changed) == len(base)  # full fine-tuning moves every tensor


def test_a_loaded_model_is_placed_where_models_run(monkeypatch, trained):
    # On a GPU machine, a model loaded for scoring (evaluation, serving) must not stay on the CPU.
    placed = []
    monkeypatch.setattr(backbone, "to_device", lambda model: placed.append(model) or model)
    rec = loader.load(trained["original"])
    assert placed and placed[-1] is rec.model


def test_t5_loads_with_plain_attention_on_a_cpu(trained):
    # SDPA's math path (a float mask, T5's position bias) is the slower kernel on a CPU.
    assert loader.load(trained["original"]).model.config._attn_implementation == "eager"


def test_a_loaded_ensemble_is_placed_with_its_aggregator(monkeypatch, trained, tmp_path):
    from e2urec.model.ensemble import Ensemble, ShardAttention, save_ensemble

    hidden = loader.load(trained["base"]).model.config.hidden_size
    save_ensemble(tmp_path / "e", [trained["base"], trained["original"]], ShardAttention(2, hidden))
    placed = []
    monkeypatch.setattr(backbone, "to_device", lambda model: placed.append(model) or model)
    rec = loader.load(tmp_path / "e")
    assert isinstance(placed[-1], Ensemble) and placed[-1] is rec.model


def test_lora_training_saves_only_an_adapter(tmp_path, trained, splits):
    from e2urec.model.train import train

    config = TrainConfig(epochs=1, lr=1e-2, lora=True, lora_rank=2, lora_alpha=4)
    report = train(
        trained["base"], splits["train"][:32], splits["valid"][:16], tmp_path / "m", config
    )
    assert (tmp_path / "m" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "m" / "e2urec.json").read_text())["kind"] == "lora"
    full = backbone.count_parameters(loader.load(trained["base"]).model)
    assert 0 < report["trainable_params"] < full / 5
    p = score(loader.load(tmp_path / "m"), splits["test"][:4])["p_yes"]
    assert ((p > 0) & (p < 1)).all()


def test_cached_teacher_equals_on_the_fly(trained, splits):
    rec = loader.load(trained["original"])
    samples = splits["forget"][:6]
    outputs = model_outputs(rec, loader.load(trained["original"]).model)
    cached = Teacher(rec, outputs, samples, range(6), cache_mb=100)
    live = Teacher(rec, outputs, samples, range(6), cache_mb=0, fallback=True)
    assert cached.cached and not live.cached
    idx = [4, 1, 3]
    batch = encode(rec, [samples[i] for i in idx])
    student = torch.randn(len(batch["labels"][batch["labels"] != -100]), len(rec.tokenizer))
    with torch.no_grad():
        direct = forward(rec, rec.model.eval(), batch).logits
    exact = kl_rows(direct, student)
    torch.testing.assert_close(live.kl(idx, student), exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.kl(idx, student), exact, rtol=0, atol=1e-3)


def test_config_from_dict_and_overrides():
    config = from_dict(TrainConfig, {"epochs": 3, "lr": "1e-4", "lora": "true"})
    assert (config.epochs, config.lr, config.lora) == (3, 1e-4, True)
    assert override(config, ["batch_size=8"]).batch_size == 8
    with pytest.raises(ValueError, match="unknown option.*epoch_count"):
        from_dict(TrainConfig, {"epoch_count": 3})
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        override(config, ["epochs=0"])
    with pytest.raises(ValueError, match="cannot read 'many' as int"):
        override(config, {"epochs": "many"})
    with pytest.raises(ValueError, match="lora: takes one value, not the options rank"):
        override(config, ["lora.rank=8"])  # not LoRA turned on by a dotted name


def test_tiny_dropout_reaches_the_saved_model_and_is_checked(tmp_path, splits):
    from e2urec.model.tiny import TinyT5, build_tiny_t5

    size = TinyT5(vocab_size=300, d_model=16, d_ff=32, heads=2, encoder_layers=1, decoder_layers=1)
    build_tiny_t5([s.input for s in splits["train"]], tmp_path, replace(size, dropout=0.0))
    model = loader.load(str(tmp_path)).model
    assert model.config.dropout_rate == 0.0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ValueError, match="dropout must be in"):
        replace(size, dropout=1.0)


def test_a_loss_in_parts_backpropagates_each_before_the_next_and_steps_as_their_sum():
    from e2urec.model.train import fit

    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))

    def run(in_parts: bool):
        model = torch.nn.Linear(3, 1)
        torch.nn.init.constant_(model.weight, 0.5)
        torch.nn.init.constant_(model.bias, 0.1)
        events, grads = [], []
        model.weight.register_hook(lambda grad: events.append("grad") or grads.append(grad))

        def a(m):
            events.append("a")
            return m(x).pow(2).mean()

        def b(m):
            events.append("b")
            return (m(x) - 1).abs().mean()

        def loss(m, batch):
            return (lambda: a(m), lambda: b(m)) if in_parts else a(m) + b(m)

        fit(model, loss, lambda epoch: [[0]], 1, 0.1, desc="parts")
        return sum(grads), events

    (parts, order), (whole, whole_order) = run(True), run(False)
    assert torch.allclose(parts, whole, atol=1e-6)  # the gradient of the summed loss
    assert order == ["a", "grad", "b", "grad"]  # a's graph is gone before b is built
    assert whole_order == ["a", "b", "grad"]


def test_training_progress_bars_follow_tqdm_disable():
    # tqdm reads TQDM_* when it is imported: a fresh process, as a user's shell starts one.
    code = (
        "import torch\n"
        "from e2urec.model.train import fit\n"
        "m = torch.nn.Linear(2, 1)\n"
        "fit(m, lambda m, b: m(torch.ones(1, 2)).sum(), lambda e: [[0]] * 3, 1, 0.1, 'quiet')\n"
    )
    env = {**os.environ, "TQDM_DISABLE": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "quiet epoch 1" not in run.stderr


def test_an_over_long_prompt_loses_its_oldest_history_not_the_question(trained, splits):
    rec = loader.load(trained["base"])
    question = splits["train"][0].input.rsplit("\n", 1)[1]  # "You should ONLY tell me yes or no."
    old = " ".join(["watched"] * 2000)
    [ids] = token_ids(rec, [f"{old}\nnewest history\n{question}"])
    assert len(ids) == MAX_LENGTH
    kept = rec.tokenizer.decode(ids, skip_special_tokens=True)
    assert kept.endswith(f"newest history {question}") or kept.endswith(
        f"newest history\n{question}"
    )
