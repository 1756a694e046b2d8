"""Each unlearning method does its own thing: its mechanism, not only "the scores moved".

Losses are checked against the same quantities computed by hand on the batch a method was about
to train on; runs are short, on the tiny recommender from conftest.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import e2urec.methods.bad_teacher
import e2urec.methods.e2urec
import e2urec.methods.sisa
from e2urec.data.sample import NO, YES, Sample
from e2urec.maths import forgetting_teacher, kl_div
from e2urec.methods import METHODS, Method, Task, get_method
from e2urec.methods.base import paired_batches
from e2urec.model import backbone, loader, score
from e2urec.model.ensemble import Ensemble, ShardAttention
from e2urec.model.scoring import encode, forward
from e2urec.model.train import answer_loss

FAST = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "lora_rank": 4, "lora_alpha": 8}

# Small float32 KLs summed in another order (another CPU) move in the 4th digit.
KL_REL = 1e-3


def make(name: str, **options) -> Method:
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    return get_method(name, {k: v for k, v in {**FAST, **options}.items() if k in fields})


class _Stop(Exception):
    pass


def first_step(method: Method, task: Task):
    """Run `method` up to its first loss: (student, batch), the student still the original."""
    seen = {}

    def stop(model, batch, epoch):
        seen.update(model=model, batch=batch)
        raise _Stop

    method.loss = stop
    with pytest.raises(_Stop):
        method.unlearn(task)
    del method.loss
    return seen["model"].eval(), seen["batch"]  # eval: no dropout, so losses can be compared


def answer_rows(rec, model, samples):
    """`forward` output (logits at every answer token) of `model`, without gradients."""
    with torch.no_grad():
        return forward(rec, model.eval(), encode(rec, samples))


def yes_no(rec, model, samples) -> torch.Tensor:
    """[B, 2]: (No, Yes) logits at each sample's first answer token."""
    return answer_rows(rec, model, samples).answer()[:, [rec.no_id, rec.yes_id]]


def jiggle(params, scale=0.05, seed=0):
    """Move a student off the original, where KL to it is zero and so is its gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def rec(trained):
    """The original recommender: the reference the methods start from."""
    return loader.load(trained["original"])


def test_neggrad_loss_falls_as_the_forget_loss_rises(make_task, rec, tmp_path):
    method = make("neggrad")
    student, batch = first_step(method, make_task(tmp_path))

    def loss_at(weight):
        method.config.weight = weight
        return method.loss(student, batch, 0).item()

    retain_ce = answer_loss(rec, student, batch.retain)[0].item()
    forget_ce = answer_loss(rec, student, batch.forget)[0].item()
    assert loss_at(0.0) == pytest.approx(retain_ce, rel=1e-5)
    # Affine in the weight with slope -CE(forget): minimising it is ascent on the forget set.
    assert loss_at(0.0) - loss_at(1.0) == pytest.approx(forget_ce, rel=1e-5)


def test_neggrad_run_raises_the_forget_loss(splits, make_task, rec, tmp_path):
    forget = splits["forget"]
    before = score(rec, forget)["loss"].mean()
    after = {}
    for weight in (0.0, 1.0):
        out = make("neggrad", weight=weight).unlearn(make_task(tmp_path / str(weight)))
        after[weight] = score(loader.load(out.model), forget)["loss"].mean()
    assert after[1.0] > before
    assert after[1.0] > after[0.0]  # the rise comes from the forget term, not from retain tuning


def test_bad_t_trains_the_forget_half_on_flipped_answers(make_task, rec, tmp_path):
    method = make("bad_t")
    student, batch = first_step(method, make_task(tmp_path))

    def loss_at(weight):
        method.config.weight = weight
        return method.loss(student, batch, 0).item()

    flipped = [NO if s.output == YES else YES for s in batch.forget]
    flipped_ce = answer_loss(rec, student, batch.forget, flipped)[0].item()
    own_ce = answer_loss(rec, student, batch.forget)[0].item()
    forget_term = loss_at(1.0) - loss_at(0.0)
    assert forget_term == pytest.approx(flipped_ce, rel=1e-5)
    assert forget_term != pytest.approx(own_ce, rel=1e-2)


def test_bad_t_run_moves_forget_answers_towards_the_flipped_ones(splits, make_task, rec, tmp_path):
    forget = splits["forget"]
    labels = np.array([s.label for s in forget])
    before = score(rec, forget)["p_yes"]
    toward = {}
    for weight in (0.0, 2.0):
        out = make("bad_t", weight=weight).unlearn(make_task(tmp_path / str(weight)))
        moved = score(loader.load(out.model), forget)["p_yes"] - before
        toward[weight] = np.where(labels == 1, -moved, moved).mean()  # + : towards the flip
    assert toward[2.0] > 0
    assert toward[2.0] > toward[0.0]


def bad_teacher_step(make_task, out, monkeypatch, seed):
    """Bad-Teacher's first batch (whole forget set, as many retain samples) and its KL inputs."""
    method = make("bad_teacher", seed=seed, temperature=2.0, batch_size=64)
    student, batch = first_step(method, make_task(out))
    calls = []
    real = e2urec.methods.bad_teacher.kl_div

    def spy(teacher, taught, temperature=1.0):
        calls.append((teacher.detach(), taught.detach(), temperature))
        return real(teacher, taught, temperature)

    monkeypatch.setattr(e2urec.methods.bad_teacher, "kl_div", spy)
    method.loss(student, batch, 0)
    assert len(calls) == 1
    return student, batch, *calls[0]


def test_bad_teacher_distils_yes_no_from_a_random_forget_teacher(
    trained, splits, make_task, rec, tmp_path, monkeypatch
):
    student, batch, teacher, taught, temperature = bad_teacher_step(
        make_task, tmp_path / "0", monkeypatch, seed=0
    )
    assert sorted(batch.forget_idx) == list(range(len(splits["forget"])))
    n = len(batch.retain)
    # Two classes, one row per sample: the student's (No, Yes) at its first answer token.
    assert teacher.shape == taught.shape == (n + len(batch.forget), 2)
    assert_close(taught, yes_no(rec, student, batch.retain + batch.forget))
    assert temperature == 2.0
    assert_close(teacher[:n], yes_no(rec, rec.model, batch.retain))  # competent: the original
    incompetent = teacher[n:]
    assert not torch.allclose(incompetent, yes_no(rec, rec.model, batch.forget), atol=1e-3)

    # Another seed draws another random incompetent teacher; the competent one stays the original.
    # (Seed 0's draw is the tiny base itself, which build_tiny_t5 initialises under seed 0 too.)
    _, batch_b, teacher_b, _, _ = bad_teacher_step(make_task, tmp_path / "1", monkeypatch, seed=1)
    assert_close(teacher_b[:n], yes_no(rec, rec.model, batch_b.retain))
    base = loader.load(trained["base"])
    assert not torch.allclose(teacher_b[n:], yes_no(rec, base.model, batch_b.forget), atol=1e-3)
    by_sample = incompetent[np.argsort(batch.forget_idx)]
    by_sample_b = teacher_b[n:][np.argsort(batch_b.forget_idx)]
    assert not torch.allclose(by_sample, by_sample_b, atol=1e-3)


def test_bad_teachers_teachers_are_computed_where_models_run(make_task, tmp_path, monkeypatch):
    # The random teacher is built, not loaded: on a GPU machine it must not stay on the CPU.
    placed, scored = [], []
    monkeypatch.setattr(backbone, "to_device", lambda model: placed.append(model) or model)
    real = e2urec.methods.bad_teacher.class_logits
    monkeypatch.setattr(
        e2urec.methods.bad_teacher,
        "class_logits",
        lambda rec, model, *args: scored.append(model) or real(rec, model, *args),
    )
    first_step(make("bad_teacher", batch_size=64), make_task(tmp_path))
    assert len(scored) == 2
    assert all(any(model is p for p in placed) for model in scored)


def test_scrub_alternates_max_and_min_passes(splits, make_task, tmp_path):
    method = make("scrub", epochs=2, msteps=1, lr=1e-5)
    seen = []
    inner = method.loss

    def spy(model, batch, epoch):
        seen.append((epoch, list(batch.forget_idx), list(batch.retain_idx)))
        return inner(model, batch, epoch)

    method.loss = spy
    method.unlearn(make_task(tmp_path))
    for epoch, max_pass in ((0, True), (1, False)):
        batches = [(f, r) for e, f, r in seen if e == epoch]
        assert all(bool(f) != bool(r) for f, r in batches)  # forget-only or retain-only
        kinds = ["max" if f else "min" for f, _ in batches]
        assert kinds == sorted(kinds)  # every max batch before every min batch
        forgotten = sorted(i for f, _ in batches for i in f)
        assert forgotten == (list(range(len(splits["forget"]))) if max_pass else [])
        assert sorted(i for _, r in batches for i in r) == list(range(len(splits["retain"])))


def test_scrub_losses_push_away_on_forget_and_pull_back_on_retain(make_task, rec, tmp_path):
    method = make("scrub", msteps=1)
    student, batch = first_step(method, make_task(tmp_path / "max"))
    assert batch.forget and not batch.retain  # the first epoch opens with a max pass
    jiggle(student.parameters(), 0.02)
    c = method.config

    def kl_to_original(samples, temperature=1.0):
        original, now = answer_rows(rec, rec.model, samples), answer_rows(rec, student, samples)
        return kl_div(original.logits, now.logits, temperature).item()

    max_loss = method.loss(student, batch, 0).item()
    away = kl_to_original(batch.forget, c.temperature)
    assert away > 0 and max_loss == pytest.approx(-(c.temperature**2) * away, rel=KL_REL)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    start = kl_to_original(batch.forget)
    for _ in range(3):
        optimizer.zero_grad()
        method.loss(student, batch, 0).backward()
        optimizer.step()
    assert kl_to_original(batch.forget) > start  # the max step increases KL to the original

    method = make("scrub", msteps=0)
    student, batch = first_step(method, make_task(tmp_path / "min"))
    assert batch.retain and not batch.forget  # no max pass at all: min batches only
    jiggle(student.parameters(), 0.02)
    ce = answer_loss(rec, student, batch.retain)[0].item()
    kl = kl_to_original(batch.retain, c.temperature)
    expected = c.ce_weight * ce + c.kl_weight * c.temperature**2 * kl
    assert method.loss(student, batch, 0).item() == pytest.approx(expected, rel=KL_REL)


def test_forgetting_teacher_lowers_only_what_the_augmented_model_raised():
    gen = torch.Generator().manual_seed(0)
    original = torch.randn(6, 9, generator=gen)
    augmented = original + torch.randn(6, 9, generator=gen)
    teacher = forgetting_teacher(original, augmented, 2.0)
    raised = augmented > original
    assert raised.any() and (~raised).any()
    assert torch.equal(teacher[~raised], original[~raised])
    assert_close(teacher[raised], original[raised] - 2.0 * (augmented - original)[raised])
    assert torch.equal(forgetting_teacher(original, augmented, 0.0), original)


def test_e2urec_teaches_forget_with_orig_minus_alpha_relu_aug(
    splits, make_task, rec, tmp_path, monkeypatch
):
    calls = []
    real = e2urec.methods.e2urec.forgetting_teacher

    def spy(original, augmented, alpha):
        calls.append((original.detach().clone(), augmented.detach().clone(), alpha))
        return real(original, augmented, alpha)

    # The forgetting teacher is computed once, for the whole forget set, before training.
    monkeypatch.setattr(e2urec.methods.e2urec, "forgetting_teacher", spy)
    method = make("e2urec", alpha=2.0, aug_lr=3e-3)
    student, batch = first_step(method, make_task(tmp_path))
    assert calls and all(alpha == 2.0 for *_, alpha in calls)
    original = torch.cat([c[0] for c in calls])
    augmented = torch.cat([c[1] for c in calls])
    assert len(original) == len(answer_rows(rec, rec.model, splits["forget"]).logits)
    # The batch's rows among them (computed in batches by length, so in another order): the
    # original's are the base model's with the adapters off.
    now = answer_rows(rec, student, batch.forget)
    mine = answer_rows(rec, rec.model, batch.forget).logits
    at = torch.cdist(mine, original).argmin(1)
    assert_close(original[at], mine, rtol=1e-4, atol=1e-4)
    # The augmented model has learned the forget set: its answers there are likelier.
    ce = torch.nn.functional.cross_entropy
    assert ce(augmented[at], now.targets) < ce(original[at], now.targets)
    # The loss is KL(orig - alpha * relu(aug - orig) || student), from the compact cache.
    target = original[at] - 2.0 * torch.relu(augmented[at] - original[at])
    expected = kl_div(target, now.logits).item()
    assert method.loss(student, batch, 0).item() == pytest.approx(expected, abs=1e-3)


def test_e2urec_forget_term_alone_then_the_documented_mix(splits, make_task, rec, tmp_path):
    # alpha 0: the forgetting teacher is the original itself, so every term is computable here.
    method = make("e2urec", epochs=2, forget_epochs=1, alpha=0.0, weight=0.6)
    task = make_task(tmp_path)
    student, batch = first_step(method, task)
    jiggle([p for p in student.parameters() if p.requires_grad])

    def kl_to_original(samples):
        return kl_div(
            answer_rows(rec, rec.model, samples).logits, answer_rows(rec, student, samples).logits
        )

    forget_only = method.loss(student, batch, 0).item()
    assert forget_only == pytest.approx(kl_to_original(batch.forget).item(), rel=KL_REL)
    retain = splits["retain"]
    other = dataclasses.replace(
        batch, retain=retain[-3:], retain_idx=[len(retain) - 3 + i for i in range(3)]
    )
    assert method.loss(student, other, 0).item() == pytest.approx(forget_only, rel=1e-6)

    # Teachers cover what training draws: take a batch of the epoch that mixes the terms.
    later = method.batches(task, 1)[0]
    forget_later = kl_to_original(later.forget).item()
    ce = answer_loss(rec, student, later.retain)[0].item()
    mix = 0.6 * (ce + kl_to_original(later.retain).item()) + 0.4 * forget_later
    parts = method.loss(student, later, 1)  # terms `fit` backpropagates one at a time
    assert len(parts) == 2 and sum(part() for part in parts).item() == pytest.approx(mix, abs=1e-3)


def spy_shard_training(monkeypatch) -> list[tuple[list[Sample], str]]:
    """Record each shard training: (its samples, its folder), and train it for real."""
    calls = []
    real = e2urec.methods.sisa.train

    def spy(base, samples, valid, out, config, **options):
        calls.append((list(samples), str(Path(out).resolve())))
        return real(base, samples, valid, out, config, **options)

    monkeypatch.setattr(e2urec.methods.sisa, "train", spy)
    return calls


def check_retrained_shards(method, task, monkeypatch):
    samples = task.retain + task.forget
    gone = set(range(len(task.retain), len(samples)))
    shards = method.partition(samples)
    held = [s for s, idx in enumerate(shards) if gone & set(idx)]
    calls = spy_shard_training(monkeypatch)
    result = method.unlearn(task)

    assert result.info["retrained_shards"] == held
    expected = [[samples[i] for i in idx if i not in gone] for idx in shards]
    # Each shard trained once: on all it held, or, if it held forgotten samples, on what it kept.
    assert len(calls) == len(shards)
    for s, kept in enumerate(expected):
        assert [c for c, _ in calls].count(kept) == 1, f"shard {s}"
    meta = json.loads((Path(result.model) / backbone.META).read_text())
    members = {str((Path(result.model) / m).resolve()) for m in meta["shards"]}
    assert members == {folder for _, folder in calls}  # the untouched shards' models, as trained
    return held


def test_sisa_retrains_only_the_shards_that_held_forgotten_samples(
    splits, make_task, tmp_path, monkeypatch
):
    method = make("sisa", shards=4, shard_epochs=1)
    task = make_task(tmp_path, forget=splits["forget"][:2])
    held = check_retrained_shards(method, task, monkeypatch)
    assert 1 <= len(held) < 4


def test_receraser_retrains_only_the_shard_of_a_forgotten_user(
    splits, make_task, tmp_path, monkeypatch
):
    user = splits["forget"][0].user
    forget = [s for s in splits["forget"] if s.user == user]
    method = make("receraser", shards=3, shard_epochs=1)
    task = make_task(tmp_path, forget=forget)
    held = check_retrained_shards(method, task, monkeypatch)
    assert len(held) == 1


def test_ensemble_averages_members_and_attention_starts_as_the_average(trained, splits, rec):
    members = [loader.load(trained[k]).model.eval() for k in ("base", "original")]
    batch = encode(rec, splits["valid"][:4])
    hidden = members[0].config.hidden_size
    with torch.no_grad():
        each = torch.stack([m(**batch).logits for m in members])
        plain = Ensemble(members)(**batch).logits
        assert_close(plain, each.mean(0))
        attention = ShardAttention(2, hidden, size=8)
        assert_close(Ensemble(members, attention).eval()(**batch).logits, plain)

        torch.nn.init.normal_(attention.query)  # as after training: weights no longer equal
        weights = attention(torch.randn(2, 3, 5, hidden))
        assert weights.shape == (2, 3, 5, 1)
        assert (weights >= 0).all()
        assert_close(weights.sum(0), torch.ones(3, 5, 1))
        assert not torch.allclose(weights, torch.full_like(weights, 0.5))
        mixed = Ensemble(members, attention).eval()(**batch).logits
        assert not torch.allclose(mixed, plain)
        low, high = each.min(0).values, each.max(0).values
        assert (mixed >= low - 1e-5).all() and (mixed <= high + 1e-5).all()


def fake_samples(counts: dict[str, int]) -> list[Sample]:
    """Users' samples, interleaved, so a user's indices are scattered."""
    rows = [(i, user) for user, n in counts.items() for i in range(n)]
    random.Random(0).shuffle(rows)
    return [Sample(f"prompt {u} {i}", YES, u, f"item{i}", 4.0, i) for i, u in rows]


@pytest.mark.parametrize("n_forget, n_retain", [(20, 50), (20, 7), (5, 5)])
def test_paired_batches_pass_once_over_forget_with_equal_retain(n_forget, n_retain):
    forget = fake_samples({"f": n_forget})
    retain = fake_samples({"r": n_retain})
    task = Task("unused", retain, forget, [], Path("unused"))
    pairs = paired_batches(task, 8, seed=3)
    assert sorted(i for p in pairs for i in p.forget_idx) == list(range(n_forget))
    assert [len(p.forget) for p in pairs][:-1] == [8] * (len(pairs) - 1)
    for p in pairs:
        assert len(p.retain) == len(p.forget)
        assert p.forget == [forget[i] for i in p.forget_idx]
        assert p.retain == [retain[i] for i in p.retain_idx]
    drawn = [i for p in pairs for i in p.retain_idx]
    for start in range(0, len(drawn), n_retain):  # retain is drawn pass by pass, no repeats
        assert len(set(drawn[start : start + n_retain])) == len(drawn[start : start + n_retain])
    assert paired_batches(task, 8, seed=3) == pairs
    assert paired_batches(task, 8, seed=4) != pairs


def test_sisa_partition_deals_every_sample_to_one_shard():
    samples = fake_samples({"a": 30, "b": 13, "c": 7})
    shards = make("sisa", shards=3).partition(samples)
    assert len(shards) == 3
    assert sorted(i for s in shards for i in s) == list(range(len(samples)))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    # By sample, not by user: a user with many samples is spread over the shards.
    assert all(any(samples[i].user == "a" for i in s) for s in shards)


def test_receraser_partition_keeps_users_whole_and_balances_samples():
    rng = random.Random(1)
    counts = {f"u{k}": rng.randint(1, 15) for k in range(30)}
    samples = fake_samples(counts)
    shards = make("receraser", shards=4).partition(samples)
    assert sorted(i for s in shards for i in s) == list(range(len(samples)))
    homes = {
        u: {k for k, s in enumerate(shards) for i in s if samples[i].user == u} for u in counts
    }
    assert all(len(h) == 1 for h in homes.values())
    loads = [len(s) for s in shards]
    heaviest = loads.index(max(loads))
    gap = max(loads) - min(loads)
    # Balanced: moving any one user off the heaviest shard to the lightest would not narrow the gap.
    assert all(counts[u] >= gap for u, h in homes.items() if h == {heaviest})
