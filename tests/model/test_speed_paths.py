"""Converged training, the token cache, length batching, compact teachers, one-copy E2URec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e2urec.maths import kl_rows
from e2urec.methods import get_method
from e2urec.methods.teacher import (
    BYTES_PER_ENTRY,
    TAIL,
    Teacher,
    compact_kl,
    compress,
    model_outputs,
)
from e2urec.model import backbone, loader, score
from e2urec.model.scoring import encode, lengths
from e2urec.model.tiny import TinyT5
from e2urec.model.train import TrainConfig, fit, mean_loss, shuffled_batches, train


def test_training_stops_when_valid_loss_stops_improving_and_keeps_the_best(
    trained, splits, tmp_path
):
    config = TrainConfig(epochs=6, patience=1, lr=0.05, batch_size=16, eval_batch_size=32)
    report = train(trained["base"], splits["train"], splits["valid"], tmp_path / "m", config)
    losses = [h["valid_loss"] for h in report["history"]]
    assert report["epochs_run"] == len(losses) <= 6
    best = report["best_epoch"]
    assert losses[best - 1] == min(losses)
    # Epochs since the best so far, after each epoch: the run never went on past the patience,
    # and ended by it or at the cap (at lr 0.05 it overfits within a few epochs)
    waited = [e - (min(range(e), key=losses.__getitem__) + 1) for e in range(1, len(losses) + 1)]
    assert all(w < config.patience for w in waited[:-1])
    assert waited[-1] >= config.patience or len(losses) == config.epochs
    saved = loader.load(tmp_path / "m")
    again = mean_loss(saved, saved.model, splits["valid"], 32)
    assert again == pytest.approx(losses[best - 1], rel=1e-4)
    on_disk = json.loads((tmp_path / "m" / "train_report.json").read_text())
    assert on_disk["epochs_run"] == report["epochs_run"]


def test_patience_schedule_and_lora_shape_are_checked():
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="lora_alpha must be positive"):
        TrainConfig(lora=True, lora_alpha=0)
    with pytest.raises(ValueError, match="tiny: heads must be at least 1, got 0"):
        TinyT5(heads=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="cosine")


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_linear_schedule_takes_the_lr_to_zero_over_the_epochs(schedule):
    # With a constant gradient each AdamW step moves the weight by about its lr.
    w = torch.nn.Parameter(torch.zeros(()))
    seen = []

    def loss(model, batch):
        seen.append(float(w.detach()))
        return w * 1.0

    fit(torch.nn.ParameterList([w]), loss, lambda e: [[0]] * 4, 2, 0.1, "t", schedule=schedule)
    steps = torch.diff(torch.tensor([*seen, float(w.detach())])).neg()
    expected = [0.1 * (1 - t / 8) if schedule == "linear" else 0.1 for t in range(8)]
    assert steps.tolist() == pytest.approx(expected, rel=0.02)


def test_prompts_are_tokenised_once(trained, splits, monkeypatch):
    rec = loader.load(trained["original"])
    calls = []
    inner = rec.tokenizer.__call__
    monkeypatch.setattr(
        type(rec.tokenizer), "__call__", lambda self, *a, **k: calls.append(1) or inner(*a, **k)
    )
    first = encode(rec, splits["test"][:8])
    n = len(calls)
    second = encode(rec, splits["test"][:8])
    assert n >= 1 and len(calls) == n  # the second pass reads the cache
    for key in first:
        assert torch.equal(first[key], second[key])
    fresh = loader.load(trained["original"]).tokenizer
    by_tokenizer = fresh([s.input for s in splits["test"][:8]], padding=True, return_tensors="pt")
    assert torch.equal(first["input_ids"], by_tokenizer["input_ids"])
    assert torch.equal(first["attention_mask"], by_tokenizer["attention_mask"])


def test_length_sorted_scoring_keeps_the_sample_order(trained, splits):
    rec = loader.load(trained["original"])
    samples = splits["test"][:20]
    together = score(rec, samples, batch_size=7)["p_yes"]
    one_by_one = [score(rec, [s], batch_size=1)["p_yes"][0] for s in samples]
    assert together == pytest.approx(one_by_one, abs=1e-5)


def test_length_buckets_are_seeded_random_and_pad_less(trained, splits):
    rec = loader.load(trained["original"])
    items = list(range(len(splits["train"])))
    sizes = lengths(rec, splits["train"])
    a = shuffled_batches(items, 8, seed=3, sizes=sizes)
    assert a == shuffled_batches(items, 8, seed=3, sizes=sizes)
    assert a != shuffled_batches(items, 8, seed=4, sizes=sizes)
    assert sorted(sum(a, [])) == items  # every sample once per epoch

    def padding(batches):
        return sum(max(sizes[i] for i in b) * len(b) - sum(sizes[i] for i in b) for b in batches)

    plain = shuffled_batches(items, 8, seed=3)
    assert padding(a) < 0.5 * padding(plain)
    firsts = [b[0] for b in a]
    assert firsts != sorted(firsts, key=sizes.__getitem__)  # batches not in length order


def test_compact_teacher_kl_is_within_1e3_of_the_exact_kl(trained, splits):
    rec = loader.load(trained["original"])
    batch = encode(rec, splits["forget"][:16])
    with torch.no_grad():
        from e2urec.model.scoring import forward

        teacher = forward(rec, rec.model.eval(), batch).logits
    torch.manual_seed(0)
    for temperature in (1.0, 4.0):
        student = teacher + torch.randn_like(teacher)  # a student that differs from the teacher
        compact = compress(teacher, temperature, cap=1024)
        assert compact.ids.shape[1] <= 1024
        got = compact_kl(compact, student, temperature)
        want = kl_rows(teacher, student, temperature)
        assert (got - want).abs().max().item() < 1e-3
        assert compact_kl(compact, teacher, temperature).abs().max().item() < 1e-3


def test_compact_form_keeps_few_tokens_of_a_peaked_row_and_notes_a_flat_one():
    vocab = 3000
    peaked = torch.full((1, vocab), -20.0)
    peaked[0, :3] = torch.tensor([5.0, 3.0, 1.0])
    compact = compress(peaked, cap=1024)
    assert compact.ids.shape[1] < 10
    assert compact.rest.exp().item() <= TAIL
    flat = compress(torch.zeros(1, vocab), cap=1024)
    assert flat.ids.shape[1] == 1024 and flat.rest.exp().item() > TAIL


def test_a_compact_row_that_stops_early_keeps_its_other_columns_in_the_bucket():
    # Rows share the width of the widest; a row that stops at one entry still has real token
    # ids in its later columns, and their mass (teacher's and student's) belongs in its bucket.
    p = torch.full((2, 200), 1e-9)
    p[0] = torch.linspace(1, 2, 200)  # near flat: many entries
    p[1, 0], p[1, 1] = 1 - 8e-5, 8e-5  # one entry reaches 1 - TAIL; token 1 is left over
    teacher = (p / p.sum(-1, keepdim=True)).log()
    compact = compress(teacher, cap=1024)
    assert torch.isfinite(compact.logp[1]).sum() == 1 and 1 in compact.ids[1].tolist()
    total = torch.logsumexp(torch.cat([compact.logp, compact.rest[:, None]], -1), -1)
    assert total.abs().max().item() < 1e-6  # every row sums to 1
    student = torch.zeros(2, 200)
    student[:, 1] = 10.0  # the student's mass sits on the token row 1 leaves over
    got, want = compact_kl(compact, student), kl_rows(teacher, student)
    assert (got - want).abs().max().item() < 1e-5


def test_rows_of_a_large_vocabulary_kept_to_1_minus_tail_leave_at_most_tail():
    # SmolLM2's 49,152 tokens: float32 probabilities there sum to 1 + 1e-5, which made every
    # such row look inexact (and a teacher with a fallback then recomputed at every step).
    torch.manual_seed(0)
    logits = 3 * torch.randn(6, 49_152)
    logits[:, 0] += 20
    compact = compress(logits, cap=49_152)
    assert (compact.rest.exp() <= TAIL).all()
    assert (torch.isfinite(compact.logp).sum(1) < 49_152).all()


def test_a_row_kept_whole_gives_finite_gradients():
    compact = compress(torch.zeros(2, 8), cap=1024)  # flat and small: every token kept
    assert torch.isinf(compact.rest).all()
    student = torch.randn(2, 8, requires_grad=True)
    compact_kl(compact, student).sum().backward()
    assert torch.isfinite(student.grad).all()


def test_teacher_cache_stays_within_its_budget_and_within_1e3_when_rows_fit(trained, splits):
    rec = loader.load(trained["original"])
    samples = splits["retain"][:24]
    outputs = model_outputs(rec, loader.load(trained["original"]).model)
    batch = encode(rec, samples)
    with torch.no_grad():
        from e2urec.model.scoring import forward

        exact_rows = forward(rec, rec.model.eval(), batch).logits
    student = exact_rows + 2 * torch.randn_like(exact_rows)
    want = kl_rows(exact_rows, student)
    roomy = Teacher(rec, outputs, samples, range(24), cache_mb=100)  # whole rows would fit
    assert roomy.inexact_rows == 0
    assert (roomy.kl(list(range(24)), student) - want).abs().max().item() < 1e-3
    budget_mb = 24 * 3 * 100 * BYTES_PER_ENTRY / 2**20  # 100 entries a row
    tight = Teacher(rec, outputs, samples, range(24), cache_mb=budget_mb)
    assert tight.cached and tight.entries() * BYTES_PER_ENTRY <= budget_mb * 2**20
    assert tight.inexact_rows > 0  # a 500-token model's rows need more than 100 entries
    live = Teacher(rec, outputs, samples, range(24), cache_mb=budget_mb, fallback=True)
    assert not live.cached  # with weights of its own it computes exactly instead
    assert (live.kl(list(range(24)), student) - want).abs().max().item() < 1e-4


def test_e2urec_uses_one_copy_and_its_augmented_model_learned_the_forget_set(
    splits, make_task, tmp_path, monkeypatch
):
    import copy

    copies = []
    real = copy.deepcopy
    monkeypatch.setattr(copy, "deepcopy", lambda x, *a: copies.append(type(x)) or real(x, *a))
    method = get_method(
        "e2urec",
        {"epochs": 2, "forget_epochs": 1, "lr": 3e-3, "aug_lr": 1e-2, "aug_epochs": 2},
    )
    method.config.lora_rank, method.config.lora_alpha = 4, 8
    task = make_task(tmp_path / "e2urec")
    result = method.unlearn(task)
    assert not [c for c in copies if issubclass(c, torch.nn.Module)]
    info = result.info
    assert info["aug_forget_loss"] < info["orig_forget_loss"]
    # Teachers cover only what training reads: the retain halves of the mixing epoch's batches.
    _, drawn = method.drawn(task, [1])
    assert info["teacher_samples"]["retain"] == len(drawn) < len(splits["retain"])
    assert Path(result.model, "adapter_config.json").exists()
    assert not Path(result.model, "augmented").exists()  # only the student adapter is saved


def test_e2urec_full_augmented_mode_tunes_a_copy_and_trains_only_the_adapter(
    trained, make_task, tmp_path
):
    options = {"epochs": 1, "lr": 3e-3, "aug_mode": "full", "aug_lr": 1e-3, "lora_rank": 4}
    method = get_method("e2urec", options)
    task = make_task(tmp_path / "full")
    result = method.unlearn(task)
    assert result.info["aug_forget_loss"] < result.info["orig_forget_loss"]
    full = backbone.count_parameters(loader.load(trained["original"]).model, False)
    assert 0 < result.trainable_params < full / 5


FREE_AND_MEASURE = """
import sys, torch
from e2urec.memory import current_rss_mb, keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
blocks = [torch.ones(4 << 20) for _ in range(16)]  # 16 x 16 MiB, touched
full = current_rss_mb()
del blocks
print(took, full - current_rss_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux RSS")
@pytest.mark.parametrize("mode", ["keep", "default"])
def test_freed_activation_sized_blocks_stay_with_the_process_only_when_asked(mode):
    out = subprocess.run(
        [sys.executable, "-c", FREE_AND_MEASURE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    released_mb = float(out[1])
    if mode == "keep":
        assert out[0] == "True"
        assert released_mb < 32  # the next step reuses them without faulting them in again
    else:
        assert released_mb > 128  # glibc's default: handed back to the kernel
