"""The paper's protocol: interactions -> time-ordered samples -> train/valid/test -> forget/retain."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from e2urec.data.canaries import plant
from e2urec.data.prompt import Profile, build_prompt
from e2urec.data.sample import NO, YES, Sample
from e2urec.data.sampling import draw_holdout, halves, sample_split
from e2urec.data.sources.base import PROFILE, Interactions


@dataclass
class Protocol:
    history: int = 10  # items shown in the prompt
    min_history: int = 5  # samples with fewer earlier ratings are dropped
    last: int = 100_000  # keep the most recent samples
    split: tuple[float, ...] = (0.6, 0.2, 0.2)  # train/valid/test, in time order
    forget_ratio: float = 0.2  # fraction of train users who ask to be forgotten
    seed: int = 42
    threshold: float = 3.0  # rating > threshold is "Yes."
    # Train/valid/test sizes drawn (uniformly, seeded) from the time split: many users in a
    # small run. None keeps every sample, as the paper does.
    sample: tuple[int, ...] | None = None
    # Held-out train-period samples (a fraction of the train size) of users who stay: no model
    # trains on them; the membership attack's non-members.
    holdout: float = 0.0
    canaries: int = 0  # per forgotten user (and as many retained users), see data/canaries.py
    canary_copies: int = 4  # times each canary is repeated in training

    def __post_init__(self):
        if self.history < 1:
            raise ValueError(f"history must be at least 1 item, got {self.history}")
        if self.min_history < 0:
            raise ValueError(f"min_history must be >= 0, got {self.min_history}")
        if self.last < 3:
            raise ValueError(f"last must keep at least 3 samples, got {self.last}")
        if (
            len(self.split) != 3
            or any(f <= 0 for f in self.split)
            or abs(sum(self.split) - 1) > 1e-6
        ):
            raise ValueError(
                f"split must be three positive fractions summing to 1, got {self.split}"
            )
        if not 0 < self.forget_ratio < 1:
            raise ValueError(f"forget_ratio must be in (0, 1), got {self.forget_ratio}")
        if self.sample is not None and (len(self.sample) != 3 or min(self.sample) < 1):
            raise ValueError(
                f"sample must be three positive sizes TRAIN,VALID,TEST, got {self.sample}"
            )
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.canaries < 0 or self.canary_copies < 1:
            raise ValueError("canaries must be >= 0 and canary_copies >= 1")


@dataclass
class Splits:
    parts: dict[str, list[Sample]]
    forgotten: list[str] = field(default_factory=list)
    candidates: int = 0  # samples with enough history, before the last-N cut
    halves: dict[str, list[str]] = field(default_factory=dict)  # forgotten: tune / eval

    def __getitem__(self, name: str) -> list[Sample]:
        return self.parts[name]


def _id_key(ids: pd.Series) -> pd.Series:
    """Numeric ids compare as numbers (the paper sorts ML-1M's int ids: 593 before 2384)."""
    numbers = pd.to_numeric(ids, errors="coerce")
    return ids if numbers.isna().any() else numbers


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    # Ties in time are broken by user then item, stably, as the paper's preprocessing does.
    keys = pd.DataFrame(
        {"t": frame["timestamp"], "u": _id_key(frame["user"]), "i": _id_key(frame["item"])}
    )
    order = keys.sort_values(["t", "u", "i"], kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def _profiles(frame: pd.DataFrame) -> list[Profile] | None:
    if not any(c in frame.columns for c in PROFILE):
        return None
    columns = {
        k: [None if pd.isna(v) else str(v) for v in frame[k]] if k in frame else [None] * len(frame)
        for k in PROFILE
    }
    return [Profile(*values) for values in zip(*(columns[k] for k in PROFILE))]


def build_samples(data: Interactions, p: Protocol) -> tuple[list[Sample], int]:
    """One sample per rating, with the user's earlier ratings as history; time order."""
    frame = _sorted(data.frame)
    position = frame.groupby("user", sort=False).cumcount().to_numpy()
    eligible = np.flatnonzero(position >= p.min_history)
    chosen = eligible[-p.last :]
    rows_of_user = frame.groupby("user", sort=False).indices
    users = frame["user"].astype(str).to_numpy()
    items = frame["item"].astype(str).to_numpy()
    times = frame["timestamp"].to_numpy(dtype="int64")
    titles = frame["title"].astype(str).to_numpy()
    ratings = frame["rating"].to_numpy(dtype=float)
    profiles = _profiles(frame.iloc[chosen])
    samples = []
    for n, i in enumerate(chosen):
        h = position[i]
        past = rows_of_user[users[i]][max(0, h - p.history) : h]
        prompt = build_prompt(
            [(titles[j], ratings[j]) for j in past],
            titles[i],
            profiles[n] if profiles else None,
            data.kind,
        )
        samples.append(
            Sample(
                input=prompt,
                output=YES if ratings[i] > p.threshold else NO,
                user=users[i],
                item=items[i],
                rating=float(ratings[i]),
                timestamp=int(times[i]),
            )
        )
    return samples, len(eligible)


def choose_forgotten(train: list[Sample], ratio: float, seed: int) -> list[str]:
    """A seeded sample of train users: `random.Random(seed).sample` over users in sorted order."""
    users = sorted({s.user for s in train})
    k = max(1, round(ratio * len(users)))
    return sorted(random.Random(seed).sample(users, k))


def make_splits(data: Interactions, p: Protocol) -> Splits:
    samples, candidates = build_samples(data, p)
    if len(samples) < 3:
        raise ValueError(
            f"only {len(samples)} sample(s) have at least {p.min_history} earlier ratings; "
            "need 3 or more (lower min_history or bring more data)"
        )
    n_train = int(len(samples) * p.split[0])
    n_valid = int(len(samples) * p.split[1])
    period = {
        "train": samples[:n_train],
        "valid": samples[n_train : n_train + n_valid],
        "test": samples[n_train + n_valid :],
    }
    # The paper's 20% of train users, chosen before any sampling so the share is the paper's.
    gone = set(choose_forgotten(period["train"], p.forget_ratio, p.seed))
    rng = random.Random(p.seed)
    parts = dict(period)
    if p.sample:
        for name, size in zip(("train", "valid", "test"), p.sample):
            parts[name] = sample_split(period[name], size, rng, name)
    stay = [s for s in period["train"] if s.user not in gone]
    if p.sample:  # held out from what the sample left, so the train sample keeps its size
        taken = {id(s) for s in parts["train"]}
        stay = [s for s in stay if id(s) not in taken]
    held = draw_holdout(stay, round(p.holdout * len(parts["train"])), rng) if p.holdout else []
    held_ids = {id(s) for s in held}
    train = [s for s in parts["train"] if id(s) not in held_ids]
    forgotten = sorted({s.user for s in train if s.user in gone})
    parts["retain"] = [s for s in train if s.user not in gone]
    parts["forget"] = [s for s in train if s.user in gone]
    parts["train"] = train
    parts["holdout"] = held
    parts["canary_control"] = []
    if p.canaries:
        _add_canaries(parts, forgotten, p, rng)
    empty = [name for name in ("train", "valid", "test", "retain", "forget") if not parts[name]]
    if empty:
        raise ValueError(
            f"{len(samples)} samples leave the {', '.join(empty)} split(s) empty; "
            "keep more samples (--last, --sample) or change the split/forget ratio"
        )
    return Splits(
        parts=parts,
        forgotten=forgotten,
        candidates=candidates,
        halves=halves(forgotten, p.seed),
    )


def _add_canaries(parts: dict, forgotten: list[str], p: Protocol, rng: random.Random) -> None:
    """Canaries for every forgotten user and for as many users who stay (at random)."""
    staying = sorted({s.user for s in parts["retain"]})
    kept = rng.sample(staying, min(len(staying), len(forgotten)))
    for users, name in ((forgotten, "forget"), (kept, "retain")):
        planted, controls = plant(parts[name], users, p.canaries, p.canary_copies, rng)
        parts[name] = parts[name] + planted
        parts["train"] = parts["train"] + planted
        parts["canary_control"] += controls
