"""Small runs that still cover many users: seeded samples of the paper's splits, a held-out set.

The paper's time split of the last 100,000 samples is kept; a small run then draws a uniform
sample of each split, so that 3,000 train samples come from hundreds of users rather than from
the few users who rated last. The held-out set is train-period data of users who stay, which no
model trains on: the membership attack's non-members, from the same users and period as the
members, so that the attack measures membership and not time or user.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from e2urec.data.sample import Sample

# No user may fill more than this share of a sampled split: one prolific user would otherwise
# make a split's metrics mostly about that user (the test split once held a user at 48%).
MAX_USER_SHARE = 0.05


def sample_split(samples: Sequence[Sample], size: int, rng: random.Random, where: str) -> list:
    """`size` samples drawn uniformly without replacement, at most MAX_USER_SHARE per user,
    returned in their original (time) order."""
    if size > len(samples):
        raise ValueError(f"sample: the {where} split has {len(samples)} samples, asked for {size}")
    cap = max(1, int(MAX_USER_SHARE * size))
    taken, per_user = [], Counter()
    for i in rng.sample(range(len(samples)), len(samples)):
        if per_user[samples[i].user] < cap:
            per_user[samples[i].user] += 1
            taken.append(i)
            if len(taken) == size:
                return [samples[j] for j in sorted(taken)]
    raise ValueError(
        f"sample: the {where} split cannot give {size} samples with no user above "
        f"{MAX_USER_SHARE:.0%} of them ({len(taken)} possible); ask for fewer"
    )


def draw_holdout(pool: Sequence[Sample], size: int, rng: random.Random) -> list[Sample]:
    """`size` samples of `pool` (train-period samples of users who stay), in time order."""
    if size > len(pool):
        raise ValueError(
            f"holdout: {size} held-out samples asked for, but only {len(pool)} train-period "
            "samples of users who stay are available; lower holdout"
        )
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), size))]


def split_stats(samples: Sequence[Sample]) -> dict:
    """Users, the largest user's share and the positive rate of one split."""
    if not samples:
        return {"users": 0, "largest_user_share": 0.0, "positive_rate": 0.0}
    counts = Counter(s.user for s in samples)
    return {
        "users": len(counts),
        "largest_user_share": round(max(counts.values()) / len(samples), 4),
        "positive_rate": round(sum(s.label for s in samples) / len(samples), 4),
    }


def halves(users: Sequence[str], seed: int) -> dict[str, list[str]]:
    """Forgotten users in two seeded halves: `tune` (hyperparameters may look at them) and
    `eval` (forget-set metrics are reported on them only)."""
    order = random.Random(seed).sample(sorted(users), len(users))
    half = len(order) // 2
    return {"tune": sorted(order[:half]), "eval": sorted(order[half:])}
