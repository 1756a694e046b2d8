"""Our maths against scipy/sklearn/numpy."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax
from sklearn.metrics import log_loss, roc_auc_score

from e2urec.evals.retrain import closeness
from e2urec.maths import forgetting_teacher, js_divergence, kl_div, l2_distance, symmetric_kl
from e2urec.metrics import classification

rng = np.random.default_rng(0)
P = softmax(rng.normal(size=(5, 7)), axis=1)
Q = softmax(rng.normal(size=(5, 7)), axis=1)


def test_jsd_matches_scipy_base_2():
    expected = jensenshannon(P, Q, base=2, axis=1) ** 2
    np.testing.assert_allclose(js_divergence(P, Q), expected, rtol=1e-10)
    assert np.all(js_divergence(P, P) < 1e-12)
    one_hot = np.eye(2)
    np.testing.assert_allclose(js_divergence(one_hot[:1], one_hot[1:]), [1.0])


def test_symmetric_kl_and_l2():
    expected = 0.5 * (rel_entr(P, Q).sum(1) + rel_entr(Q, P).sum(1))
    np.testing.assert_allclose(symmetric_kl(P, Q), expected, rtol=1e-6)
    np.testing.assert_allclose(l2_distance(P, Q), np.sqrt(((P - Q) ** 2).sum(1)))


def test_kl_div_from_logits_matches_scipy():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    pa, pb = softmax(a.numpy(), axis=1), softmax(b.numpy(), axis=1)
    expected = rel_entr(pa, pb).sum(1).mean()
    assert kl_div(a, b).item() == pytest.approx(expected, rel=1e-5)
    assert kl_div(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_forgetting_teacher_only_lowers_what_augmentation_raised():
    orig = torch.tensor([[1.0, 2.0, 3.0]])
    aug = torch.tensor([[2.0, 1.0, 3.0]])
    assert forgetting_teacher(orig, aug, alpha=2.0).tolist() == [[-1.0, 2.0, 3.0]]


def test_classification_against_sklearn():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.2, 0.7, 0.4, 0.3, 0.9])
    got = classification(y, p)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p))
    assert got["logloss"] == pytest.approx(log_loss(y, p))
    assert got["acc"] == pytest.approx(0.8)


def test_closeness_is_zero_to_itself():
    p_yes = np.array([0.1, 0.8, 0.5, 0.4, 0.3])
    same = closeness(P, P, p_yes, p_yes)
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in same.values())
    other = closeness(P, Q, p_yes, 1 - p_yes)
    assert all(v > 0 for v in other.values())
