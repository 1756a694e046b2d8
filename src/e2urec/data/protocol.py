"""The paper's protocol: interactions -> time-ordered samples -> train/valid/test -> forget/retain."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from e2urec.data.prompt import Profile, build_prompt
from e2urec.data.sample import NO, YES, Sample
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


@dataclass
class Splits:
    parts: dict[str, list[Sample]]
    forgotten: list[str] = field(default_factory=list)
    candidates: int = 0  # samples with enough history, before the last-N cut

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
    train = samples[:n_train]
    forgotten = choose_forgotten(train, p.forget_ratio, p.seed)
    gone = set(forgotten)
    parts = {
        "train": train,
        "valid": samples[n_train : n_train + n_valid],
        "test": samples[n_train + n_valid :],
        "retain": [s for s in train if s.user not in gone],
        "forget": [s for s in train if s.user in gone],
    }
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise ValueError(
            f"{len(samples)} samples leave the {', '.join(empty)} split(s) empty; "
            "keep more samples (--last) or change the split/forget ratio"
        )
    return Splits(parts=parts, forgotten=forgotten, candidates=candidates)
