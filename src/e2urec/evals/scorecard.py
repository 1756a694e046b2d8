"""A model's scorecard: test and forget classification and the membership attack, for `assess`
(a model before and after a request: deploy/'s verification) and for a request's report.

A deletion request's report compares the model before and after it. What does not depend on
the request (test metrics, the membership attack's member and non-member features) is computed
once per model and stored as `<model>/standing.json`, so a request on a model whose standing
is known scores only the forgotten samples again: work in proportion to the request.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from e2urec.data.sample import Sample
from e2urec.evals import mia
from e2urec.evals.sets import AttackSets
from e2urec.metrics import scored_classification
from e2urec.model import loader, score
from e2urec.model.backbone import Recommender

STANDING = "standing.json"


def _digest(test: list[Sample], seed: int) -> str:
    # The feature names too: a standing kept with other attack features is stale.
    text = json.dumps([seed, mia.FEATURES] + [[s.user, s.item, s.timestamp] for s in test])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def standing(
    folder, rec: Recommender, test: list[Sample], retain: list[Sample], batch_size=64, seed=0
) -> dict:
    """Test metrics and attack features of the model in `folder`, from its file when current."""
    path = Path(folder) / STANDING
    digest = _digest(test, seed)
    if path.exists():
        known = json.loads(path.read_text())
        if known.get("digest") == digest:
            return known
    t = score(rec, test, batch_size, desc="standing test")
    known = attack_features(rec, test, t, retain, batch_size, seed)
    data = {
        "digest": digest,
        "test": scored_classification(test, t),
        **{k: _listed(v) for k, v in known.items()},
    }
    _write(path, data)
    return data


def judge(rec: Recommender, forget: list[Sample], known: dict, batch_size=64, seed=0) -> dict:
    """Test, forget and MIA numbers of a model for one request: only `forget` is scored."""
    f = score(rec, forget, batch_size, desc="forgotten samples")
    arrays = {k: (np.asarray(known[k][0]), np.asarray(known[k][1])) for k in _SETS}
    auc = mia.mia_auc(
        arrays["members"],
        arrays["nonmembers"],
        mia.sample_features(forget, f),
        arrays["unseen"],
        seed,
    )
    return {
        "test": known["test"],
        "forget": scored_classification(forget, f),
        "mia_auc": auc,
    }


_SETS = ("members", "nonmembers", "unseen")


def attack_features(rec, test, test_scores, retain, batch_size=64, seed=0, desc="scoring") -> dict:
    """The attack's members, non-members and unseen samples as features, the pool being `test`,
    whose scores are already known: only the members are scored."""
    attack = AttackSets.draw(retain, test, seed)
    m = score(rec, attack.members, batch_size, desc=desc)
    pool = mia.sample_features(test, test_scores)
    return {
        "members": mia.sample_features(attack.members, m),
        "nonmembers": mia.subset(pool, attack.plan.nonmembers),
        "unseen": mia.subset(pool, attack.plan.unseen),
    }


def evaluate(model: str | Path, samples, batch_size: int = 64) -> dict:
    rec = loader.load(model)  # a model this package saved: it records its answers
    return scored_classification(samples, score(rec, samples, batch_size))


def assess(model, test, forget, retain, batch_size=64, seed=0, full=False) -> tuple[dict, dict]:
    """Test and forget classification plus MIA AUC of one model, the attack's non-members and
    unseen samples drawn from `test` (held-out samples no model saw); also its forget scores
    (with the vocabulary distribution when `full`, for closeness to Retrain)."""
    rec = loader.load(model) if isinstance(model, (str, Path)) else model
    name = Path(rec.path).name
    t = score(rec, test, batch_size, desc=f"eval {name} test")
    f = score(rec, forget, batch_size, full=full, desc=f"eval {name} forget")
    known = attack_features(rec, test, t, retain, batch_size, seed, f"eval {name} members")
    metrics = {
        "test": scored_classification(test, t),
        "forget": scored_classification(forget, f),
        "mia_auc": mia.mia_auc(
            known["members"],
            known["nonmembers"],
            mia.sample_features(forget, f),
            known["unseen"],
            seed,
        ),
        "mia_unseen": len(known["unseen"][1]),  # the AUC's negatives, for its standard error
    }
    return metrics, f


def judged(model, test: list[Sample], forget: list[Sample], retain: list[Sample]) -> dict:
    """`judge` of `model` (a folder this package saved, or the original, already loaded) on a
    request's forgotten samples, its standing read from beside it when current."""
    rec = loader.load(model) if isinstance(model, str) else model
    return judge(rec, forget, standing(rec.path, rec, test, retain))


def _listed(labelled) -> list:
    x, y = labelled
    return [np.asarray(x).tolist(), np.asarray(y).tolist()]


def _write(path: Path, data: dict) -> None:
    """Atomically, and not at all where the model folder is read-only (it is only a cache)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError:
        return
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
