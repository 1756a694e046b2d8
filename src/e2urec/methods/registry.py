"""The one list of unlearning methods. Add a method here once; contract tests pick it up."""

from __future__ import annotations

from e2urec.config import from_dict
from e2urec.methods.apa import Apa
from e2urec.methods.bad_t import BadT
from e2urec.methods.bad_teacher import BadTeacher
from e2urec.methods.base import Method
from e2urec.methods.e2urec import E2URec
from e2urec.methods.neggrad import NegGrad
from e2urec.methods.receraser import RecEraser
from e2urec.methods.retrain import Retrain
from e2urec.methods.scrub import Scrub
from e2urec.methods.sisa import Sisa

METHODS: dict[str, type[Method]] = {
    "retrain": Retrain,
    "sisa": Sisa,
    "receraser": RecEraser,
    "apa": Apa,
    "neggrad": NegGrad,
    "bad_t": BadT,
    "bad_teacher": BadTeacher,
    "scrub": Scrub,
    "e2urec": E2URec,
}


def get_method(name: str, options: dict | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[name]
    return cls(from_dict(cls.Config, options, where=name))
