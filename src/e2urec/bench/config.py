"""What a bench runs: its config (a preset, YAML, `--set`), and each seed's version of it."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from e2urec.config import from_dict, load_yaml
from e2urec.data.protocol import Protocol
from e2urec.methods import get_method
from e2urec.model.tiny import TinyT5
from e2urec.model.train import TrainConfig

SECTIONS = {"protocol": Protocol, "tiny": TinyT5, "train": TrainConfig}
EXECUTORS = ("local", "ray")
NOISE_SEED = 1000  # retrain_b's training seed is Retrain's plus this


@dataclass
class Bench:
    dataset: str = "movielens"
    raw: str | None = None
    model: str = "tiny"  # "tiny" builds the embedded T5; otherwise a folder or hub name
    base: str | None = None  # the base `model` sits on, when it is a PEFT adapter from elsewhere
    methods: tuple[str, ...] = ("retrain", "e2urec")
    eval_batch_size: int = 64
    protocol: Protocol = field(default_factory=Protocol)
    tiny: TinyT5 = field(default_factory=TinyT5)
    train: TrainConfig = field(default_factory=TrainConfig)
    method_options: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = ()  # seeds to average over (see `seeded`)
    workers: int = 1  # > 1: originals, methods and evaluations side by side (run_seeds)
    # "ray": the same jobs on a Ray cluster (bench/ray_pool.py), at `address` or a local one.
    executor: str = "local"
    address: str | None = None
    requests: int = 0  # > 0: also time this many single-user E2URec requests
    sequential: int = 0  # > 1: also forget the users in this many successive requests
    mia_seed: int = 0  # which test samples train the attack and which are held out

    def __post_init__(self):
        if self.sequential < 0:
            raise ValueError(f"sequential must be >= 0, got {self.sequential}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.address and self.executor != "ray":
            raise ValueError("address names a Ray cluster: it needs executor ray")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "bench") -> Bench:
        data = copy.deepcopy(data)
        nested = {k: from_dict(c, data.pop(k, {}), f"{where}.{k}") for k, c in SECTIONS.items()}
        options = data.pop("method_options", {}) or {}
        bench = from_dict(cls, data, where)
        bench = cls(**{**asdict(bench), **nested, "method_options": options})
        for name in bench.methods:
            get_method(name, options.get(name))  # fail now, not after an hour of training
        return bench


def preset(name: str) -> dict:
    files = resources.files("e2urec") / "presets"
    known = sorted(
        p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml")
    )
    if name not in known:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(known)}")
    values = load_yaml(Path(str(files / f"{name}.yaml")))
    base = values.pop("extends", None)  # a preset written as its differences from another
    return merge(preset(base), values) if base else values


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def method_rows(bench: Bench) -> list[tuple[str, str, TrainConfig]]:
    """(row, method, training config) for every unlearning row: the methods, and after Retrain
    the noise floor, Retrain again with another seed."""
    rows = []
    for name in bench.methods:
        rows.append((name, name, bench.train))
        if name == "retrain":
            rows.append(
                ("retrain_b", name, replace(bench.train, seed=bench.train.seed + NOISE_SEED))
            )
    return rows


def seeded(bench: Bench, seed: int | None) -> Bench:
    """The bench's configs with `seed` in every place a seed goes."""
    if seed is None:
        return bench
    options = {n: {**(bench.method_options.get(n) or {}), "seed": seed} for n in bench.methods}
    return replace(
        bench,
        protocol=replace(bench.protocol, seed=bench.protocol.seed + seed),
        tiny=replace(bench.tiny, seed=seed),
        train=replace(bench.train, seed=seed),
        method_options=options,
    )


def jsonable(bench: Bench) -> dict:
    data = asdict(bench)
    data["generated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return data
