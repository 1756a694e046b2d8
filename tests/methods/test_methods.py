"""One contract for every registered unlearning method, run on the tiny trained recommender."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch

import e2urec.methods
from e2urec.methods import METHODS, LossMethod, Method, get_method
from e2urec.model import loader, score
from e2urec.model.lora import TARGETS

# Small and fast; each method takes the options its config has.
TINY = {
    "epochs": 1,
    "batch_size": 8,
    "lr": 3e-3,
    "shards": 2,
    "msteps": 1,
    "lora_rank": 4,
    "lora_alpha": 8,
    "attention_size": 8,
}
INFRASTRUCTURE = {"base", "registry", "teacher"}  # modules in methods/ that are not methods


def tiny_method(name: str) -> Method:
    fields = {f.name for f in dataclasses.fields(METHODS[name].Config)}
    return get_method(name, {k: v for k, v in TINY.items() if k in fields})


def may_change(method: Method, param: str) -> bool:
    """LoRA methods may only move the adapted projections; the others may move anything."""
    if getattr(method, "lora", False):
        return param.split(".")[-2] in TARGETS["t5"]
    return True


def changed_params(model: torch.nn.Module, original: torch.nn.Module) -> set[str]:
    reference = original.state_dict()
    changed = set()
    for name, value in model.state_dict().items():
        plain = name.split(".", 2)[-1] if name.startswith("shards.") else name  # ensemble member
        if plain not in reference or not torch.equal(value, reference[plain]):
            changed.add(name)
    return changed


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name, trained, splits, make_task, tmp_path):
    method = tiny_method(name)
    losses = []
    if isinstance(method, LossMethod):
        inner = method.loss
        method.loss = lambda m, b, e: losses.append(inner(m, b, e)) or losses[-1]
    task = make_task(tmp_path / name)
    result = method.unlearn(task)

    if isinstance(method, LossMethod):
        assert losses and all(torch.isfinite(v) for v in losses)
    assert 0 < result.seconds <= result.info["wall_seconds"]
    original = loader.load(trained["original"])
    rec = loader.load(result.model)
    changed = changed_params(rec.model, original.model)
    assert changed, "no parameter moved"
    assert all(may_change(method, p) for p in changed), sorted(changed)[:5]
    before = score(original, splits["forget"])["p_yes"]
    after = score(rec, splits["forget"])["p_yes"]
    assert np.isfinite(after).all() and len(after) == len(splits["forget"])
    assert not np.allclose(before, after, atol=1e-4), "scores on the forget set did not move"


def test_registry_matches_method_files():
    files = {m.name for m in pkgutil.iter_modules(e2urec.methods.__path__)} - INFRASTRUCTURE
    registered = set(METHODS.values())
    for file in files:
        module = importlib.import_module(f"e2urec.methods.{file}")
        defined = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Method) and c.__module__ == module.__name__
        ]
        assert defined and set(defined) <= registered, f"methods/{file}.py: unregistered method"
    assert {c.__module__.rsplit(".", 1)[1] for c in registered} == files
    assert all(cls.name == name for name, cls in METHODS.items())


@pytest.mark.parametrize(
    "name, options",
    [
        ("sisa", {"shards": 1}),
        ("sisa", {"shard_epochs": 0}),
        ("receraser", {"attention_size": 0}),
        ("apa", {"shards": 1}),
        ("apa", {"partition": "random"}),
        ("apa", {"temperature": 0}),
        ("apa", {"neighbours": 0}),
        ("neggrad", {"weight": -1}),
        ("bad_t", {"weight": -0.5}),
        ("bad_teacher", {"temperature": 0}),
        ("scrub", {"msteps": 4, "epochs": 3}),
        ("scrub", {"kl_weight": -1}),
        ("e2urec", {"weight": 2}),
        ("e2urec", {"lora_rank": 0}),
        ("e2urec", {"lora_dropout": 1.0}),
        ("retrain", {"epochs": 0}),
        ("neggrad", {"no_such_option": 1}),
    ],
)
def test_bad_config_values_are_refused(name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        get_method(name, options)
