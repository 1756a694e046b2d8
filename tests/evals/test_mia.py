"""Membership inference: known answers on synthetic features and on a model that memorised."""

from __future__ import annotations

import random

import numpy as np
import pytest

from e2urec.data.sample import NO, YES, Sample
from e2urec.evals import mia
from e2urec.model import score
from e2urec.model.tiny import TinyT5, build_tiny_t5
from e2urec.model.train import answer_loss, fit


def test_features_are_loss_true_answer_log_odds_and_log_entropy():
    p_yes = np.array([0.9, 0.9, 0.5])
    log_odds = np.log(p_yes) - np.log1p(-p_yes)
    x = mia.features(log_odds, loss=np.array([0.1, 2.3, 0.7]), labels=np.array([1, 0, 1]))
    assert x.shape == (3, len(mia.FEATURES))
    np.testing.assert_allclose(x[:, 0], [0.1, 2.3, 0.7])
    np.testing.assert_allclose(x[:, 1], [np.log(9), -np.log(9), 0.0], atol=1e-12)
    entropy = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    np.testing.assert_allclose(x[:, 2], np.log([entropy, entropy, np.log(2)]))


def test_features_of_confident_answers_do_not_tie():
    # P(true) and the entropy saturate in floating point long before the log-odds do.
    log_odds = np.array([20.0, 30.0, 40.0, 60.0])
    x = mia.features(log_odds, loss=np.zeros(4), labels=np.ones(4))
    assert len(set(x[:, 1])) == 4 and len(set(x[:, 2])) == 4
    assert np.all(np.diff(x[:, 2]) < 0) and np.all(np.isfinite(x))


def test_attack_trains_on_balanced_classes_and_held_out_halves_are_disjoint():
    x, y = mia.balanced(np.zeros((30, 3)), np.ones((7, 3)), seed=0)
    assert len(x) == 14 and y.sum() == 7
    plan = mia.Plan.make(n_retain=100, n_heldout=21, seed=3)
    assert set(plan.nonmembers).isdisjoint(plan.unseen)
    assert sorted([*plan.nonmembers, *plan.unseen]) == list(range(21))
    assert len(plan.members) == len(plan.nonmembers) and plan.members.max() < 100
    with pytest.raises(ValueError, match="at least 2"):
        mia.balanced(np.zeros((1, 3)), np.ones((5, 3)), seed=0)


def synthetic(rng, n: int, member: bool):
    """Members: low loss, confident and right; non-members: higher loss, less sure."""
    loss = rng.gamma(2.0, 0.1 if member else 0.4, n)
    p_true = np.exp(-loss)
    labels = (rng.random(n) < 0.5).astype(int)
    p_yes = np.clip(np.where(labels == 1, p_true, 1 - p_true), 1e-12, 1 - 1e-12)
    return mia.features(np.log(p_yes) - np.log1p(-p_yes), loss, labels), labels


def test_known_answer_on_synthetic_features():
    rng = np.random.default_rng(0)
    members, nonmembers = synthetic(rng, 500, True), synthetic(rng, 500, False)
    still_known = synthetic(rng, 500, True)  # "forgotten" samples the model still fits
    truly_unseen = synthetic(rng, 500, False)  # what ideal unlearning makes them look like
    held_out = synthetic(rng, 500, False)
    assert mia.mia_auc(members, nonmembers, still_known, held_out) > 0.8
    assert abs(mia.mia_auc(members, nonmembers, truly_unseen, held_out) - 0.5) < 0.05


def short_samples(n: int, seed: int) -> list[Sample]:
    """Short prompts with random answers: only memorising them can fit them."""
    rng = random.Random(seed)
    return [
        Sample(
            f"user {rng.randrange(1000)} rated movie {rng.randrange(1000)}",
            rng.choice([YES, NO]),
            "u",
            str(i),
            3.0,
            i,
        )
        for i in range(n)
    ]


def test_known_answer_on_a_model_that_memorised_its_train_set(tmp_path):
    pool = short_samples(144, seed=0)
    memorised, nonmembers, unseen = pool[:16], pool[16:80], pool[80:]
    size = TinyT5(vocab_size=300, d_model=64, d_ff=128, heads=2, encoder_layers=1, decoder_layers=1)
    rec = build_tiny_t5([s.input for s in pool], tmp_path / "base", size)
    fit(rec.model, lambda m, b: answer_loss(rec, m, b)[0], lambda e: [memorised], 100, 3e-3, "mem")

    def feats(samples):
        return mia.sample_features(samples, score(rec, samples, 64))

    (m, _), (o, _), (u, _) = feats(memorised), feats(nonmembers), feats(unseen)
    assert m[:, 0].mean() < o[:, 0].mean()  # it did memorise
    attack = mia.fit_attack(m[:8], o[:32])
    assert mia.attack_auc(attack, m[8:], o[32:]) > 0.8
    assert abs(mia.attack_auc(attack, u, o[32:]) - 0.5) < 0.2


def test_an_attack_that_knows_only_the_label_scores_one_half():
    """Members and forgotten samples are mostly "Yes.", non-members mostly "No.": a pooled
    attack would score well on the label alone; the per-class attack cannot."""
    rng = np.random.default_rng(1)

    def label_only(n, p_yes_rate):
        labels = (rng.random(n) < p_yes_rate).astype(int)
        return np.stack([labels, labels, labels], axis=1).astype(float), labels

    members, nonmembers = label_only(400, 0.8), label_only(400, 0.3)
    forgotten, unseen = label_only(300, 0.8), label_only(300, 0.3)
    pooled = mia.attack_auc(mia.fit_attack(members[0], nonmembers[0]), forgotten[0], unseen[0])
    assert pooled > 0.7  # the confound the per-class attack removes
    assert mia.mia_auc(members, nonmembers, forgotten, unseen) == pytest.approx(0.5)


def test_privleak_is_relative_to_retrain():
    assert mia.privleak(0.6, 0.5) == pytest.approx(0.2)
    assert mia.privleak(0.5, 0.5) == 0
