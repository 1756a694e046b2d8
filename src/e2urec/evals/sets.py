"""The samples a model is judged on: the bench's sets, and the membership attack's, drawn here
and nowhere else (the bench, a request's scorecard and a deployment's verification share it)."""

from __future__ import annotations

from dataclasses import dataclass

from e2urec.data.canaries import real, unique
from e2urec.data.sample import Sample
from e2urec.evals import mia


@dataclass
class AttackSets:
    """Retained samples the attack learns as members, and a held-out pool's two halves: the
    non-members it learns and the unseen samples it is scored against (with the forgotten)."""

    members: list[Sample]
    nonmembers: list[Sample]
    unseen: list[Sample]
    plan: mia.Plan  # the positions drawn: a caller that scored the whole pool takes its rows

    @classmethod
    def draw(cls, retain: list[Sample], pool: list[Sample], seed: int = 0) -> AttackSets:
        plan = mia.Plan.make(len(retain), len(pool), seed)
        return cls(
            members=[retain[i] for i in plan.members],
            nonmembers=[pool[i] for i in plan.nonmembers],
            unseen=[pool[i] for i in plan.unseen],
            plan=plan,
        )


@dataclass
class EvalSets:
    """The samples a model is measured on (all real, except the canaries)."""

    test: list[Sample]
    valid: list[Sample]
    forget: list[Sample]  # forgotten users' real samples on which forgetting is reported
    attack: AttackSets  # the pool: the held-out split, or test without one
    canaries: list[Sample]  # planted in forgotten users' data
    canaries_retained: list[Sample]  # planted in retained users' data
    controls: list[Sample]  # made the same way, never trained on

    @classmethod
    def make(cls, splits: dict, forget: list[Sample], seed: int = 0) -> EvalSets:
        """`forget`: the forgotten samples to report on (canaries among them are split off)."""
        pool = splits.get("holdout") or splits["test"]
        users = {s.user for s in forget}
        return cls(
            test=splits["test"],
            valid=splits["valid"],
            forget=real(forget),
            attack=AttackSets.draw(real(splits["retain"]), pool, seed),
            canaries=[s for s in unique(splits["forget"]) if s.user in users],
            canaries_retained=unique(splits["retain"]),
            controls=splits.get("canary_control") or [],
        )
