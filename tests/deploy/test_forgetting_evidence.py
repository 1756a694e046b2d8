"""Verification says what it knows: "did no harm" and "shows forgetting" apart (issue 26, 11)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import test_deploy
from fastapi.testclient import TestClient
from scipy import stats

from e2urec.deploy import apply, init, request, status
from e2urec.deploy.verification import NOT_SHOWN, SHOWN, STRUCTURAL, Bounds, evidence
from e2urec.methods import METHODS, Method
from e2urec.service.app import create_app
from e2urec.service.config import ServiceConfig

source, model = test_deploy.source, test_deploy.model
TOKEN = "t0ken-for-tests-only-0123456789"


class Unchanged(Method):
    """Returns the model it was given: it forgets nothing."""

    name = "unchanged"

    def run(self, task):
        shutil.copytree(task.original, task.out, dirs_exist_ok=True)
        return str(task.out), 0, {}


def test_a_method_that_changes_nothing_is_never_shown_as_forgotten(
    tmp_path, source, model, monkeypatch
):
    monkeypatch.setitem(METHODS, "unchanged", Unchanged)
    root = tmp_path / "d"
    init(source, model, root, options=test_deploy.OPTIONS)
    rid = request(root, users=[test_deploy.HIDDEN])
    [outcome] = apply(root, method="unchanged", options={"verify": {"samples": 20}})
    # It did no harm (nothing changed), and the data is purged: amber is a finding, not a block.
    assert outcome["state"] == "purged" and outcome["verification"]["passed"]
    found = outcome["forgetting"]
    assert found["verdict"] == NOT_SHOWN and not found["shown"]
    assert found["effect"] == pytest.approx(0, abs=1e-9) and found["p_value"] > 0.05
    assert status(root, rid)["requests"][0]["forgetting"]["verdict"] == NOT_SHOWN
    config = ServiceConfig(deploy=root, token=TOKEN, window=3600)
    with TestClient(create_app(config), base_url="http://127.0.0.1") as c:
        page = c.get("/").text
    assert '<span class="forgetting amber">no measurable forgetting</span>' in page
    assert "passed" not in page and "did no harm" in page


def test_an_exact_method_gives_structural_evidence(tmp_path, source, model):
    root = tmp_path / "d"
    init(source, model, root, options=test_deploy.OPTIONS)
    request(root, users=[test_deploy.HIDDEN])
    [outcome] = apply(root, method="retrain", options={"epochs": 1, "verify": {"samples": 20}})
    assert outcome["forgetting"]["verdict"] == STRUCTURAL and outcome["forgetting"]["shown"]
    assert "no trained part" in outcome["forgetting"]["note"]


def test_the_permutation_test_against_scipy():
    rng = np.random.default_rng(3)
    control = rng.normal(0, 1, 12)
    bounds = Bounds(permutations=4000)
    for shift, shown in ((-2.0, True), (0.0, False), (+1.0, False)):
        forget = rng.normal(shift, 1, 9)
        found = evidence(forget, control, bounds)
        assert found["shown"] is shown and found["verdict"] == (SHOWN if shown else NOT_SHOWN)
        assert found["effect"] == pytest.approx(control.mean() - forget.mean())
        ref = stats.permutation_test(
            (control, forget),
            lambda a, b: a.mean() - b.mean(),
            alternative="greater",
            n_resamples=20000,
            random_state=0,
        )
        assert found["p_value"] == pytest.approx(ref.pvalue, abs=0.02)
    with pytest.raises(ValueError, match="verify.permutations must be at least 100"):
        Bounds(permutations=10)
