"""What the distillation methods distil (`target`), and SCRUB's max step on exact teachers."""

from __future__ import annotations

import math

import pytest
import torch
from test_mechanisms import KL_REL, answer_rows, first_step, jiggle, make, yes_no
from torch.testing import assert_close

from e2urec.maths import kl_div, kl_rows
from e2urec.methods import get_method
from e2urec.methods.teacher import BYTES_PER_ENTRY, ROWS_PER_SAMPLE, TAIL
from e2urec.model import backbone, loader


@pytest.fixture(scope="module")
def rec(trained):
    return loader.load(trained["original"])


def test_each_method_declares_its_papers_target():
    # Bad Teacher's teachers are classifiers (two classes); E2URec's code distils the whole
    # vocabulary at every answer row (utils.py, compute_forced_kl); SCRUB as today (README).
    defaults = {"bad_teacher": "yes_no", "scrub": "vocabulary", "e2urec": "vocabulary"}
    for name, target in defaults.items():
        assert get_method(name).config.target == target
        with pytest.raises(ValueError, match="target must be one of"):
            get_method(name, {"target": "logits"})


def test_scrub_distils_yes_no_when_asked(make_task, rec, tmp_path):
    method = make("scrub", msteps=1, target="yes_no")
    student, batch = first_step(method, make_task(tmp_path))
    assert batch.forget and not batch.retain
    jiggle(student.parameters(), 0.02)
    t = method.config.temperature
    want = kl_div(yes_no(rec, rec.model, batch.forget), yes_no(rec, student, batch.forget), t)
    whole = kl_div(
        answer_rows(rec, rec.model, batch.forget).logits,
        answer_rows(rec, student, batch.forget).logits,
        t,
    )
    assert not math.isclose(want.item(), whole.item(), rel_tol=0.05)  # the choice matters here
    assert method.loss(student, batch, 0).item() == pytest.approx(-(t**2) * want.item(), rel=KL_REL)


def test_e2urec_distils_yes_no_when_asked(make_task, rec, tmp_path):
    # alpha 0: the forgetting teacher is the original, so its target rows are computable here.
    method = make("e2urec", alpha=0.0, target="yes_no", aug_lr=3e-3)
    student, batch = first_step(method, make_task(tmp_path))
    jiggle([p for p in student.parameters() if p.requires_grad])
    want = kl_div(yes_no(rec, rec.model, batch.forget), yes_no(rec, student, batch.forget))
    assert method.loss(student, batch, 0).item() == pytest.approx(want.item(), rel=KL_REL)


def test_bad_teacher_distils_the_vocabulary_when_asked(make_task, rec, tmp_path, monkeypatch):
    placed = []
    real = backbone.to_device
    monkeypatch.setattr(backbone, "to_device", lambda m: placed.append(m) or real(m))
    method = make("bad_teacher", target="vocabulary", temperature=2.0, batch_size=64)
    student, batch = first_step(method, make_task(tmp_path))
    others = {id(m): m for m in placed if m is not student}  # the student is the loaded original
    assert len(others) == 1
    incompetent = next(iter(others.values()))
    jiggle(student.parameters(), 0.02)

    def rows(model, samples):
        return answer_rows(rec, model, samples).logits

    teacher = torch.cat([rows(rec.model, batch.retain), rows(incompetent, batch.forget)])
    taught = torch.cat([rows(student, batch.retain), rows(student, batch.forget)])
    assert len(teacher) == 3 * len(batch)  # every answer row, not one per sample
    want = kl_div(teacher, taught, 2.0).item()
    assert method.loss(student, batch, 0).item() == pytest.approx(want, rel=KL_REL)


def scrub_budget(splits, entries: int) -> float:
    """SCRUB's cache_mb at which `entries` entries a row fit for every sample it draws."""
    drawn = len(splits["forget"]) + len(splits["retain"])
    return entries * drawn * ROWS_PER_SAMPLE * BYTES_PER_ENTRY / 2**20


def needed(rec, samples, temperature: float) -> torch.Tensor:
    """Per answer row, the fewest likeliest tokens that hold 1 - TAIL of the mass."""
    logits = answer_rows(rec, rec.model, samples).logits.double() / temperature
    mass = torch.softmax(logits, -1).sort(-1, descending=True).values.cumsum(-1)
    return (mass < 1 - TAIL).sum(-1) + 1


def test_scrub_reports_its_coarsened_rows_and_recomputes_the_max_steps(
    splits, make_task, rec, tmp_path
):
    # T 0.3: rows need some 270-350 of the 500 tokens. A budget that gives each forget row as
    # many entries as the median forget sample's neediest row leaves about half of the
    # samples whole and coarsens a row or more of the others.
    t, n_forget, n_retain = 0.3, len(splits["forget"]), len(splits["retain"])
    sizes = answer_rows(rec, rec.model, splits["forget"]).sizes.tolist()
    per_sample = needed(rec, splits["forget"], t).split(sizes)
    cap = int(torch.stack([rows.max() for rows in per_sample]).median())
    cache_mb = cap * n_forget * ROWS_PER_SAMPLE * BYTES_PER_ENTRY / 2**20
    retain_cap = int(cap * n_forget / n_retain)  # each teacher shares the budget over its own
    forget = int((needed(rec, splits["forget"], t) > cap).sum())
    retain = int((needed(rec, splits["retain"], t) > retain_cap).sum())
    options = {"epochs": 1, "msteps": 1, "temperature": t, "cache_mb": cache_mb, "batch_size": 64}
    info = make("scrub", **options).unlearn(make_task(tmp_path / "run")).info
    assert 0 < forget < ROWS_PER_SAMPLE * n_forget
    assert info["inexact_rows"] == forget + retain
    assert info["recomputed_rows"] == forget  # the max step's, computed exactly

    # A max-step batch with samples on the cache and samples recomputed: the exact KL.
    method = make("scrub", **options)
    student, batch = first_step(method, make_task(tmp_path / "step"))
    live = method.on_forget.live
    assert 0 < len(live & set(batch.forget_idx)) < len(batch.forget_idx)
    jiggle(student.parameters(), 0.02)
    now = answer_rows(rec, student, batch.forget)
    exact = kl_rows(answer_rows(rec, rec.model, batch.forget).logits, now.logits, t)
    rows = method.on_forget.kl(batch.forget_idx, now)
    recomputed = torch.tensor([i in live for i in batch.forget_idx]).repeat_interleave(now.sizes)
    assert_close(rows[recomputed], exact[recomputed], rtol=1e-5, atol=1e-8)
    # The cached samples' rows hold all but TAIL of their mass: within a hair of exact.
    assert_close(rows[~recomputed], exact[~recomputed], rtol=0, atol=1e-4)
    loss = method.loss(student, batch, 0).item()
    assert loss == pytest.approx(-(t**2) * exact.mean().item(), rel=1e-3)


def test_scrub_max_step_is_exact_where_its_cache_is_coarsened(splits, make_task, rec, tmp_path):
    # T 4 flattens the rows: at 64 entries most leave much of their mass to the bucket.
    method = make("scrub", msteps=1, cache_mb=scrub_budget(splits, 64))
    student, batch = first_step(method, make_task(tmp_path))
    assert batch.forget and not batch.retain
    cap = int(scrub_budget(splits, 64) * 2**20 / (len(splits["forget"]) * 3 * BYTES_PER_ENTRY))
    assert (needed(rec, batch.forget, 4.0) > cap).all()  # every row coarsened in the cache
    jiggle(student.parameters(), 0.02)
    t = method.config.temperature
    exact = kl_div(
        answer_rows(rec, rec.model, batch.forget).logits,
        answer_rows(rec, student, batch.forget).logits,
        t,
    ).item()
    loss = method.loss(student, batch, 0)
    assert loss.item() == pytest.approx(-(t**2) * exact, rel=KL_REL)
    loss.backward()  # the exact rows are differentiable in the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # The min step's teacher stays on its cache (the issue is the max step's climb).
    assert method.on_retain.cached and not method.on_retain.live
