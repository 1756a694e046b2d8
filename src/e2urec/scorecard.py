"""A model's scorecard (its standing) on the fixed evaluation sets, computed once and kept beside it.

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

from e2urec import mia
from e2urec.data.sample import Sample
from e2urec.metrics import scored_classification
from e2urec.model import score
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
    plan = mia.Plan.make(len(retain), len(test), seed)
    members = [retain[i] for i in plan.members]
    t = score(rec, test, batch_size, desc="standing test")
    pool = mia.sample_features(test, t)
    data = {
        "digest": digest,
        "test": scored_classification(test, t),
        "members": _listed(mia.sample_features(members, score(rec, members, batch_size))),
        "nonmembers": _listed(mia.subset(pool, plan.nonmembers)),
        "unseen": _listed(mia.subset(pool, plan.unseen)),
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
