"""What the bench measures: thresholds, canary exposure, bootstrap verdicts, the reference rule."""

from __future__ import annotations

import numpy as np
import pytest

from e2urec.data import Protocol, load_splits, prepare
from e2urec.data.canaries import is_canary, unique
from e2urec.data.sample import NO, YES, Sample
from e2urec.evals.evaluation import (
    best_threshold,
    evaluate,
    exposure,
    history_mean_scorer,
    shown_mean,
)
from e2urec.evals.intervals import auc_ci, bootstrap_ci, jsd_verdict
from e2urec.evals.retrain import forget_quality
from e2urec.evals.sets import EvalSets
from e2urec.maths import js_divergence
from e2urec.metrics import classification


def test_threshold_chosen_on_valid_reads_a_model_whose_scores_all_sit_above_half():
    labels = np.array([0, 0, 0, 1, 1, 1])
    p_yes = np.array([0.61, 0.62, 0.63, 0.71, 0.72, 0.73])
    cut = best_threshold(labels, p_yes)
    assert 0.63 <= cut < 0.71
    m = classification(labels, p_yes, cut)
    assert m["acc"] == 1.0 and m["acc_05"] == 0.5
    assert "acc_05" not in classification(labels, p_yes)  # no threshold: acc is at 0.5


def test_exposure_is_the_auc_of_planted_against_controls():
    assert exposure(np.array([3.0, 4.0]), np.array([-1.0, 0.0, 1.0])) == 1.0
    rng = np.random.default_rng(0)
    same = exposure(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(same - 0.5) < 0.03


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_users():
    rng = np.random.default_rng(1)
    small, large = rng.normal(1, 1, 50), rng.normal(1, 1, 5000)
    lo_s, hi_s = bootstrap_ci(small, np.arange(50))
    lo_l, hi_l = bootstrap_ci(large, np.arange(5000))
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5


def test_a_users_copies_of_one_value_do_not_narrow_the_interval():
    # Samples of one user are not independent: ten samples of each user carry what one did.
    rng = np.random.default_rng(4)
    per_user, users = rng.normal(0, 1, 40), np.array([f"u{i}" for i in range(40)])
    once = bootstrap_ci(per_user, users)
    assert bootstrap_ci(np.repeat(per_user, 10), np.repeat(users, 10)) == pytest.approx(once)
    as_if_independent = bootstrap_ci(np.repeat(per_user, 10), np.arange(400))
    assert as_if_independent[1] - as_if_independent[0] < (once[1] - once[0]) / 2


def test_auc_interval_resamples_users():
    rng = np.random.default_rng(5)
    labels, users = np.tile([0, 1], 30), np.repeat(np.arange(30), 2)
    rank = labels + rng.normal(0, 1, 60)
    low, high = auc_ci(labels, rank, users)
    assert low < classification(labels, rank)["auc"] < high
    assert auc_ci(np.zeros(6), rank[:6], users[:6]) is None  # one class: no AUC
    assert auc_ci(labels, rank, np.zeros(60)) is None  # one user: no spread between users
    assert all(np.isnan(bootstrap_ci(rank, np.zeros(60))))


def test_auc_ranks_by_log_odds_where_probabilities_saturate():
    labels = np.array([0, 0, 1, 1])
    log_odds = np.array([18.0, 19.0, 20.0, 21.0])  # a confident model, ranked right
    p_yes = (1 / (1 + np.exp(-log_odds))).astype(np.float32)
    assert set(p_yes.tolist()) == {1.0}  # float32 P(Yes) ties: an AUC of 0.5 from them
    assert classification(labels, p_yes)["auc"] == 0.5
    assert classification(labels, p_yes, log_odds=log_odds)["auc"] == 1.0


def test_forget_quality_is_the_ks_p_value_against_retrain():
    rng = np.random.default_rng(6)
    retrain = rng.normal(0, 1, 300)
    assert forget_quality(retrain, retrain) == 1.0
    assert forget_quality(rng.normal(0, 1, 300), retrain) > 0.01
    assert forget_quality(rng.normal(1, 1, 300), retrain) < 1e-6


def test_jsd_verdict_is_paired_over_samples():
    rng = np.random.default_rng(2)
    original = rng.uniform(0.05, 0.2, 300)
    users = np.arange(300)
    # Shifts far smaller than the spread between samples: the three intervals overlap, and
    # only differences taken sample by sample show the method below the original, above the floor
    close = original - 0.003 + rng.normal(0, 0.001, 300)
    floor = original - 0.006
    v = jsd_verdict(close, original, floor, users)
    assert v["below_original"] and v["above_floor"]
    assert v["jsd_ci"][0] < close.mean() < v["jsd_ci"][1]
    same = jsd_verdict(original, original, original, users)
    assert not same["below_original"] and not same["above_floor"]


def test_jsd_verdict_resamples_users_not_samples():
    # Three users, each a hundred samples: the method's gain is one user's; per sample it
    # looks sure, per user it is not.
    rng = np.random.default_rng(7)
    users = np.repeat(["a", "b", "c"], 100)
    original = rng.uniform(0.05, 0.2, 300)
    method = original - np.where(users == "a", 0.01, -0.002) + rng.normal(0, 1e-4, 300)
    assert bootstrap_ci(method - original, np.arange(300))[1] < 0
    assert not jsd_verdict(method, original, original, users)["below_original"]


def logit(scores: dict) -> dict:
    """A fake scorer's scores with the log-odds its P(Yes) implies, as `score` returns them."""
    return {**scores, "log_odds": np.log(scores["p_yes"]) - np.log1p(-scores["p_yes"])}


def prompt(ratings: list[float]) -> str:
    shown = str([f"{i}. Film {i} ({r:g} stars)" for i, r in enumerate(ratings)])
    return f"The user watched ...:\n{shown}\nBased on ... ***Target***.\nYou should ONLY tell me yes or no."


def test_history_mean_rule_scores_the_mean_shown_rating():
    high, low = prompt([5, 4.5, 5]), prompt([1, 2, 1.5])
    assert shown_mean(Sample(high, YES, "u", "1", 5, 0)) == pytest.approx(14.5 / 3)
    samples = [Sample(high, YES, "u", "1", 5, 0), Sample(low, NO, "u", "2", 1, 1)]
    scores = history_mean_scorer(samples)
    assert scores["p_yes"][0] > 0.8 > 0.3 > scores["p_yes"][1]
    assert scores["loss"][0] == pytest.approx(-np.log(scores["p_yes"][0]))


@pytest.fixture(scope="module")
def canary_splits(tmp_path_factory):
    out = tmp_path_factory.mktemp("canary") / "d"
    prepare(out, protocol=Protocol(last=3000, history=3, holdout=0.1, canaries=2, seed=3))
    return load_splits(out)


def test_eval_sets_keep_canaries_apart_and_the_attack_sets_disjoint(canary_splits):
    splits = canary_splits
    reported_user = next(s.user for s in splits["forget"] if is_canary(s))
    forget = [s for s in splits["forget"] if s.user == reported_user]
    sets = EvalSets.make(splits, forget)
    assert sets.forget and not any(is_canary(s) for s in sets.forget + sets.attack.members)
    assert {s.user for s in sets.canaries} == {reported_user} and len(sets.canaries) == 2
    assert sets.canaries_retained == unique(splits["retain"])
    assert not set(sets.attack.nonmembers) & set(sets.attack.unseen)
    assert set(sets.attack.nonmembers + sets.attack.unseen) <= set(splits["holdout"])


def test_a_scorer_that_memorised_the_canaries_is_exposed_and_one_that_did_not_is_not(
    canary_splits,
):
    splits = canary_splits
    sets = EvalSets.make(splits, splits["forget"])

    def memorising(train):
        planted = {s.item: s.output for s in unique(train)}

        def scorer(samples, full=False):
            out = history_mean_scorer(samples)
            known = [planted.get(s.item) for s in samples]
            out["p_yes"] = np.array(
                [0.99 if k == YES else 0.01 if k == NO else p for k, p in zip(known, out["p_yes"])]
            )
            return logit(out)

        return scorer

    remembered, _ = evaluate(memorising(splits["train"]), sets)
    assert remembered["canary_exposure"] == 1.0 and remembered["canary_retained"] == 1.0
    # What ideal unlearning leaves: the retained users' canaries, not the forgotten users'
    unlearned, _ = evaluate(memorising(splits["retain"]), sets)
    assert unlearned["canary_retained"] == 1.0 and 0.2 < unlearned["canary_exposure"] < 0.8
    rule, _ = evaluate(history_mean_scorer, sets)
    # The rule sees only the shown ratings: it cannot tell planted answers from controls'.
    assert 0.2 < rule["canary_exposure"] < 0.8
    assert set(rule["test"]) == {"auc", "auc_ci", "acc", "acc_05", "logloss"}


def test_an_attack_on_a_model_that_only_knows_the_label_scores_one_half(canary_splits):
    splits = canary_splits
    sets = EvalSets.make(splits, splits["forget"])

    def label_only(samples, full=False):
        p = np.array([0.9 if s.label else 0.1 for s in samples])
        return logit({"p_yes": p, "loss": -np.log(np.where([s.label for s in samples], p, 1 - p))})

    metrics, _ = evaluate(label_only, sets)
    assert metrics["mia_auc"] == pytest.approx(0.5)


def test_the_accuracy_cut_is_chosen_on_valid_and_applied_to_test(canary_splits):
    sets = EvalSets.make(canary_splits, canary_splits["forget"])

    def shifted(samples, full=False):  # separates the labels at 0.7 on valid, at 0.3 on test
        out = history_mean_scorer(samples)
        low = {id(sets.valid): 0.6, id(sets.test): 0.2}.get(id(samples))
        if low is not None:
            out["p_yes"] = np.array([low + 0.2 * s.label for s in samples])
        return logit(out)

    metrics, _ = evaluate(shifted, sets)
    assert metrics["threshold"] == pytest.approx(0.7)
    negatives = np.mean([s.label == 0 for s in sets.test])
    assert 0 < negatives < 1 and metrics["test"]["acc"] == pytest.approx(negatives)


def test_forget_distributions_are_written_and_read_a_block_at_a_time(tmp_path, monkeypatch):
    import e2urec.evals.evaluation as evaluation
    import e2urec.evals.retrain as retrain

    monkeypatch.setattr(evaluation, "CHUNK", 3)  # 8 samples: chunks of 3, 3 and 2
    monkeypatch.setattr(retrain, "CHUNK", 3)
    samples = [Sample("x", YES, str(i % 2), str(i), 5, i) for i in range(8)]
    rng = np.random.default_rng(0)
    dist = rng.dirichlet(np.ones(5), 8).astype(np.float32)
    where = {id(s): i for i, s in enumerate(samples)}
    calls = []

    def scorer(chunk, full):
        rows = [where[id(s)] for s in chunk]
        calls.append(len(rows))
        p = dist[rows, 0]
        return {"p_yes": p, "loss": -np.log(p), "log_odds": np.log(p / (1 - p)), "dist": dist[rows]}

    out = evaluation.forget_scores(scorer, samples, tmp_path / "d.npy")
    assert calls == [3, 3, 2] and isinstance(out["dist"], evaluation.Rows)
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), dist)
    np.testing.assert_array_equal(out["dist"][2:7], dist[2:7])
    np.testing.assert_array_equal(out["p_yes"], dist[:, 0])
    ref = rng.dirichlet(np.ones(5), 8)
    whole = retrain.closeness(dist, ref, dist[:, 0], ref[:, 0])
    assert retrain.closeness(out["dist"], ref, dist[:, 0], ref[:, 0]) == pytest.approx(whole)
    assert whole["jsd"] == pytest.approx(float(np.mean(js_divergence(dist, ref))))
