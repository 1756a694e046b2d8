"""Checking an unlearned model before it goes live: cheap, bounded, recorded.

Two separate results. "Did no harm" (`passed`, the bounds below) asks that nothing broke:
utility, leakage, the forgotten answers not made surer. It does not ask for forgetting, so an
unlearning that does nothing passes it. "Shows forgetting" (`forgetting`) asks for evidence
that the request's data lost its hold: the forgotten samples' change in log-odds of the true
answer against the same change on as many samples of random retained users (a permutation
test). Within noise it says "no measurable forgetting": a finding shown amber on the page and
in status, not a block (the data is purged all the same). For an exact method (one that trains
from the backbone without the rows) the evidence is structural, and says so.

The work is proportional to the request: the forgotten samples are scored before and after, and
the membership attack uses at most `samples` retain members and twice as many held-out samples,
whatever the size of the data. Held-out samples come from `holdout.jsonl` when the data has one
(never trained on, never tuned on), else from the test split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from e2urec.data.sample import Sample
from e2urec.evals.retrain import closeness
from e2urec.evals.scorecard import assess
from e2urec.model import loader, score

SHOWN, NOT_SHOWN, STRUCTURAL = "shows forgetting", "no measurable forgetting", "structural"


@dataclass
class Bounds:
    """What a request must pass before its model goes live. The defaults:

    - max_mia_auc 0.7: 0.5 means the attack cannot tell forgotten samples from unseen ones
      (Retrain sits a little off 0.5 because test samples come later in time); an attack that
      still beats 0.7 has found the data in the model. The check uses the AUC's 95% lower bound
      (Hanley-McNeil standard error), so a one-user request with a handful of samples is not
      failed by chance.
    - mia_min_forget 10: on fewer forgotten samples the AUC is recorded but not judged: on one
      sample it can only be 0 or 1, and its standard error formula then says 0.
    - max_p_true_rise 0.05: unlearning must not make the model surer of the forgotten answers
      than before; 0.05 leaves room for the retain terms, which pull shared tastes back up.
    - max_utility_drop 0.1 (AUC on held-out samples): the paper's E2URec loses about 0.01; 0.1
      means the model got worse for everyone, not just the forgotten.
    - samples 200: attack members, non-members and unseen samples each; the AUC's standard error
      is then about 0.04, and verification scores under a thousand samples.
    - retrain False, max_jsd 0.1: a Retrain reference costs a full training run, so it is
      opt-in; JSD (base 2, in [0, 1]) to it on the forgotten samples above 0.1 fails.
    - forget_alpha 0.05, permutations 2000: forgetting is shown when the permutation test's
      one-sided p-value is below 0.05 (2000 permutations resolve p to about 0.0005).
    """

    max_mia_auc: float = 0.7
    mia_min_forget: int = 10
    max_p_true_rise: float = 0.05
    max_utility_drop: float = 0.1
    samples: int = 200
    retrain: bool = False
    max_jsd: float = 0.1
    forget_alpha: float = 0.05
    permutations: int = 2000
    seed: int = 0

    def __post_init__(self):
        for name in ("max_mia_auc", "max_p_true_rise", "max_utility_drop", "max_jsd", "forget_alpha"):  # fmt: skip
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"verify.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mia_min_forget < 1:
            raise ValueError(f"verify.mia_min_forget must be at least 1, got {self.mia_min_forget}")
        if self.samples < 2:
            raise ValueError(f"verify.samples must be at least 2, got {self.samples}")
        if self.permutations < 100:
            raise ValueError(f"verify.permutations must be at least 100, got {self.permutations}")


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    """Standard error of an AUC from `positives` and `negatives` (Hanley & McNeil, 1982)."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def _subset(samples: list[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    idx = np.sort(rng.choice(len(samples), min(n, len(samples)), replace=False))
    return [samples[i] for i in idx]


def _p_true(samples: list[Sample], p_yes: np.ndarray) -> float:
    labels = np.array([s.label for s in samples])
    return float(np.where(labels == 1, p_yes, 1 - p_yes).mean())


def _clean(value):
    """NaN (an AUC on one class) is not JSON: None instead."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def verify(
    before: str,
    after: str,
    forget: list[Sample],
    retain: list[Sample],
    holdout: list[Sample],
    holdout_name: str,
    bounds: Bounds,
    reference: str | None = None,
    exact: str | None = None,
) -> dict:
    """Verification numbers of `after` (the unlearned model) against `before`, the verdict on
    harm (`passed`) and the evidence of forgetting. `exact`: the name of an exact method, whose
    evidence is structural. With fewer than MIN_HELD held-out or MIN_MEMBERS retained samples
    (a deletion took nearly all of them) the attack and the held-out AUC are left out and
    `limited` says so: a data subject's erasure must not wait on the evaluation's sample size."""
    rng = np.random.default_rng(bounds.seed)
    limited = _limited(holdout, holdout_name, retain)
    held = [] if limited else _subset(holdout, 2 * bounds.samples, rng)
    members = [] if limited else _subset(retain, bounds.samples, rng)
    control = control_samples(forget, retain, rng)
    rec = loader.load(before)
    was, f_was = _assess(rec, held, forget, members, bounds.seed)
    c_was = score(rec, control)["p_yes"] if exact is None else None
    rec = loader.load(after)
    now, f_now = _assess(rec, held, forget, members, bounds.seed, full=reference is not None)
    c_now = score(rec, control)["p_yes"] if exact is None else None
    del rec
    numbers = {
        "holdout": holdout_name,
        "samples": {"forget": len(forget), "members": len(members), "held_out": len(held)},
        "forget_p_true": {
            "before": _p_true(forget, f_was["p_yes"]),
            "after": _p_true(forget, f_now["p_yes"]),
        },
        "forget_shift": float(np.abs(f_now["p_yes"] - f_was["p_yes"]).mean()),
        "mia_auc": None,
        "holdout_auc": None,
        "jsd_retrain": None,
        "limited": limited,
    }
    if not limited:
        se = hanley_mcneil_se(now["mia_auc"], len(forget), now["mia_unseen"])
        numbers["mia_auc"] = {"before": was["mia_auc"], "after": now["mia_auc"], "se": se}
        numbers["holdout_auc"] = {"before": was["test"]["auc"], "after": now["test"]["auc"]}
    if reference is not None:
        ref = score(loader.load(reference), forget, full=True)
        numbers["jsd_retrain"] = closeness(f_now["dist"], ref["dist"], f_now["p_yes"], ref["p_yes"])["jsd"]  # fmt: skip
    if exact is not None:
        numbers["forgetting"] = {
            "verdict": STRUCTURAL,
            "shown": True,
            "note": f"{exact} trains from the backbone without the forgotten rows: "
            "no trained part of the new model saw them",
        }
    elif not control:
        numbers["forgetting"] = {
            "verdict": NOT_SHOWN,
            "shown": False,
            "note": "no retained samples left to compare the forgotten ones with",
        }
    else:
        d_forget = _logodds_change(forget, f_was["p_yes"], f_now["p_yes"])
        d_control = _logodds_change(control, c_was, c_now)
        numbers["forgetting"] = evidence(d_forget, d_control, bounds)
    numbers = _clean(numbers)
    failures = _failures(numbers, bounds)
    return {**numbers, "bounds": asdict(bounds), "passed": not failures, "failures": failures}


MIN_HELD, MIN_MEMBERS = 4, 2  # what the attack's halves and an AUC need at the least


def _limited(holdout: list[Sample], name: str, retain: list[Sample] | None = None) -> str | None:
    """Why the held-out checks are left out, or None when there are samples enough for them."""
    few_members = retain is not None and len(retain) < MIN_MEMBERS
    if len(holdout) >= MIN_HELD and not few_members:
        return None
    kept = f" and {len(retain)} retained" if retain is not None else ""
    return (
        f"only {len(holdout)} held-out samples in {name}{kept}: the membership attack and the "
        "held-out AUC were left out"
    )


def _assess(rec, held, forget, members, seed, full=False) -> tuple[dict | None, dict]:
    """`assess`, or only the forgotten samples' scores when there is nothing held out."""
    if held:
        return assess(rec, held, forget, members, seed=seed, full=full)
    return None, score(rec, forget, full=full)


def verify_exact(
    before: str,
    after: str,
    gone: set[str],
    holdout: list[Sample],
    holdout_name: str,
    bounds: Bounds,
) -> dict:
    """The exact phase's model against the live one: the same held-out utility bound, and the
    structural evidence: an APA model whose users (`homes`) and pool name none of `gone`."""
    from e2urec.metrics import scored_classification
    from e2urec.model import apa, backbone

    limited = _limited(holdout, holdout_name)
    held = [] if limited else _subset(holdout, 2 * bounds.samples, np.random.default_rng(bounds.seed))  # fmt: skip
    aucs = {"before": float("nan"), "after": float("nan")}
    if held:
        for name, folder in (("before", before), ("after", after)):
            aucs[name] = scored_classification(held, score(loader.load(folder), held))["auc"]
    meta = backbone.read_meta(after)
    pooled = {row[0] for row in apa.read_pool(after)["samples"]}
    left = sorted(gone & (set(meta.get("homes", {})) | pooled))
    numbers = {
        "holdout": holdout_name,
        "samples": {"forget": 0, "members": 0, "held_out": len(held)},
        "holdout_auc": _clean(aucs),
        "limited": limited,
        "forgetting": {
            "verdict": STRUCTURAL,
            "shown": not left,
            "note": "the shards that held the requests' rows were retrained from the backbone "
            "on the data left after the purge; the model's users and pool name none of them",
        },
    }
    failures = [f"{len(left)} forgotten user(s) still in the model's homes or pool"] if left else []
    was, now = aucs["before"], aucs["after"]
    if not (math.isnan(was) or math.isnan(now)) and was - now > bounds.max_utility_drop:
        failures.append(
            f"held-out AUC fell from {was:.3f} to {now:.3f} (more than {bounds.max_utility_drop})"
        )
    return {**numbers, "bounds": asdict(bounds), "passed": not failures, "failures": failures}


def control_samples(forget: list[Sample], retain: list[Sample], rng) -> list[Sample]:
    """As many retained samples as forgotten ones, from random retained users (whole users,
    as a request takes them, so the control changes as a request's samples would by chance)."""
    gone = {s.user for s in forget}
    by_user: dict[str, list[Sample]] = {}
    for s in retain:
        if s.user not in gone:
            by_user.setdefault(s.user, []).append(s)
    users = sorted(by_user)
    chosen: list[Sample] = []
    for i in rng.permutation(len(users)):
        chosen += by_user[users[i]]
        if len(chosen) >= len(forget):
            break
    pool = chosen if len(chosen) >= len(forget) else retain
    return _subset(pool, len(forget), rng)


def _logodds_change(samples: list[Sample], was: np.ndarray, now: np.ndarray) -> np.ndarray:
    """Per sample: the change in log-odds of the true answer (negative: less sure of it)."""
    labels = np.array([s.label for s in samples])

    def logodds(p_yes):
        p = np.clip(np.where(labels == 1, p_yes, 1 - p_yes), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    return logodds(np.asarray(now, dtype=float)) - logodds(np.asarray(was, dtype=float))


def permutation_p(d_forget: np.ndarray, d_control: np.ndarray, n: int, seed: int) -> float:
    """One-sided p-value of mean(d_control) - mean(d_forget) under exchangeable labels."""
    pooled, k = np.concatenate([d_forget, d_control]), len(d_forget)
    observed = d_control.mean() - d_forget.mean()
    rng, above = np.random.default_rng(seed), 0
    for start in range(0, n, 100):  # in chunks: a large request's matrix stays small
        shuffled = pooled[np.argsort(rng.random((min(100, n - start), len(pooled))), axis=1)]
        effects = shuffled[:, k:].mean(axis=1) - shuffled[:, :k].mean(axis=1)
        above += int(np.sum(effects >= observed - 1e-12))
    return (1 + above) / (n + 1)


def evidence(d_forget: np.ndarray, d_control: np.ndarray, bounds: Bounds) -> dict:
    """Did the forgotten answers lose more confidence than retained ones, beyond chance?"""
    effect = float(d_control.mean() - d_forget.mean())
    p = permutation_p(d_forget, d_control, bounds.permutations, bounds.seed)
    shown = effect > 0 and p < bounds.forget_alpha
    return {
        "verdict": SHOWN if shown else NOT_SHOWN,
        "shown": bool(shown),
        "effect": effect,  # log-odds: how much more the forgotten answers fell than the control
        "p_value": p,
        "forget_change": float(d_forget.mean()),
        "control_change": float(d_control.mean()),
        "samples": len(d_forget),
        "test": "permutation, one-sided, random retained users' samples as control",
    }


def _failures(n: dict, b: Bounds) -> list[str]:
    failures = []
    auc, se = (n["mia_auc"] or {}).get("after"), (n["mia_auc"] or {}).get("se")
    judged = auc is not None and n["samples"]["forget"] >= b.mia_min_forget
    if judged and auc - 1.96 * se > b.max_mia_auc:
        failures.append(
            f"membership attack AUC {auc:.3f} (95% lower bound {auc - 1.96 * se:.3f}) is above "
            f"{b.max_mia_auc}: the model still tells the forgotten samples from unseen ones"
        )
    rise = n["forget_p_true"]["after"] - n["forget_p_true"]["before"]
    if rise > b.max_p_true_rise:
        failures.append(
            f"the forgotten answers became more likely (+{rise:.3f} > {b.max_p_true_rise})"
        )
    was, now = (n["holdout_auc"] or {}).get("before"), (n["holdout_auc"] or {}).get("after")
    if was is not None and now is not None and was - now > b.max_utility_drop:
        failures.append(
            f"held-out AUC fell from {was:.3f} to {now:.3f} (more than {b.max_utility_drop})"
        )
    jsd = n["jsd_retrain"]
    if jsd is not None and jsd > b.max_jsd:
        failures.append(f"JSD to the Retrain reference {jsd:.3f} is above {b.max_jsd}")
    return failures
