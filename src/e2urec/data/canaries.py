"""Canaries: planted samples whose memorisation can be measured, even on a small model.

A small recommender memorises almost nothing of a few real users, so forgetting them moves
little and no method can be judged by it. A canary is one of a user's real prompts (their real
history) with the target replaced by an invented title and a planted answer drawn at random: a
model that answers it better than chance has memorised that user's data. Control canaries are
made the same way and never trained on, so "better than chance" is measured against them:
exposure is the AUC of the planted answer's log-odds, planted canaries against controls (0.5:
nothing memorised). Canaries of forgotten users measure what unlearning left; canaries of users
who stay must stay learned, or the "forgetting" erased everything.

Canary rows carry the item id `canary:<user>:<n>`, so any later step can drop them from real outputs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import replace

from e2urec.data.sample import NO, YES, Sample

PREFIX = "canary:"
_WORD = re.compile(r"[A-Za-z]{4,}")


def is_canary(sample: Sample) -> bool:
    return sample.item.startswith(PREFIX)


def real(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if not is_canary(s)]


def unique(samples: Sequence[Sample]) -> list[Sample]:
    """One row per canary (training holds several copies of each)."""
    seen: dict[str, Sample] = {}
    for s in samples:
        if is_canary(s):
            seen.setdefault(s.item, s)
    return list(seen.values())


def _title(words: list[str], taken: set[str], rng: random.Random) -> str:
    # In-vocabulary words, so the tokenizer spells the title with ordinary tokens.
    while True:
        title = f"{' '.join(rng.sample(words, 3))} ({rng.randint(1930, 2015)})"
        if title not in taken:
            taken.add(title)
            return title


def plant(
    train: Sequence[Sample],
    users: Sequence[str],
    per_user: int,
    copies: int,
    rng: random.Random,
    target: Callable[[Sample], str],
    retarget: Callable[[Sample, str], str],
) -> tuple[list[Sample], list[Sample]]:
    """`per_user` canaries for each of `users` (each repeated `copies` times, to train on) and
    as many controls (one copy each, never trained on), from the same users' prompts:
    `retarget(sample, title)` is the sample's prompt asking about `title` instead of
    `target(sample)`; invented titles are made of the targets' words and differ from them."""
    titles = {target(s) for s in train}
    words = sorted({w for t in titles for w in _WORD.findall(t)})
    if len(words) < 3:
        raise ValueError("canaries: the titles have too few words to invent new ones")
    by_user: dict[str, list[Sample]] = {}
    for s in train:
        by_user.setdefault(s.user, []).append(s)
    planted, controls = [], []
    for user in users:
        n = 0
        for _ in range(per_user):
            for group in (planted, controls):
                source = rng.choice(by_user[user])
                title = _title(words, titles, rng)
                canary = replace(
                    source,
                    input=retarget(source, title),
                    output=rng.choice((YES, NO)),
                    item=f"{PREFIX}{user}:{n}",  # users are disjoint between calls
                )
                n += 1
                group.extend([canary] * (copies if group is planted else 1))
    return planted, controls
