"""The one list of unlearning methods. Add a method here once; contract tests pick it up."""

from __future__ import annotations

from e2urec.config import from_dict
from e2urec.methods.base import Method
from e2urec.methods.e2urec import E2URec
from e2urec.methods.retrain import Retrain

METHODS: dict[str, type[Method]] = {
    "retrain": Retrain,
    "e2urec": E2URec,
}


def get_method(name: str, options: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[name]
    return cls(from_dict(cls.Config, options, where=name))
