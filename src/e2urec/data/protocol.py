"""The paper's protocol: interactions -> time-ordered samples -> train/valid/test -> forget/retain."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from e2urec.data.canaries import plant
from e2urec.data.prompt import Profile, Template
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
    canaries: int = 0  # per reported forgotten user (and retained user), see data/canaries.py
    canary_copies: int = 4  # times each canary is repeated in training
    # How a prompt reads: "paper" (byte for byte), "compact" or a Jinja2 file (data/prompt.py).
    template: str = "paper"
    # The words the model answers with, Yes first: the first token of each is what is scored.
    # The prepared files keep "Yes."/"No." as the label whatever these are.
    answers: tuple[str, ...] = (YES, NO)

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
        Template.named(self.template)  # refuses an unknown name or a broken file now
        if len(self.answers) != 2 or not all(a.strip() for a in self.answers):
            raise ValueError(f"answers must be two words YES,NO, got {','.join(self.answers)!r}")
        if self.answers[0].strip() == self.answers[1].strip():
            raise ValueError(f"answers must differ, got {self.answers[0]!r} twice")


@dataclass
class Splits:
    parts: dict[str, list[Sample]]
    forgotten: list[str] = field(default_factory=list)
    candidates: int = 0  # samples with enough history, before the last-N cut
    halves: dict[str, list[str]] = field(default_factory=dict)  # forgotten: tune / eval
    titles: dict[str, str] = field(default_factory=dict)  # item -> title, of every prompt

    def __getitem__(self, name: str) -> list[Sample]:
        return self.parts[name]


def _key(db, column: str) -> str:
    """Numeric ids compare as numbers (the paper sorts ML-1M's int ids: 593 before 2384)."""
    whole, numeric = db.execute(
        f"SELECT bool_and(regexp_full_match(\"{column}\", '\\s*-?[0-9]{{1,18}}\\s*')), "
        f'bool_and(TRY_CAST("{column}" AS DOUBLE) IS NOT NULL) FROM interactions'
    ).fetchall()[0]
    return f'CAST("{column}" AS {"BIGINT" if whole else "DOUBLE"})' if numeric else f'"{column}"'


def _rank(db, p: Protocol) -> None:
    """Tables `ranked` (each rating's place among its user's) and `chosen` (the last N samples)."""
    user, item = _key(db, "user"), _key(db, "item")
    # Ties in time are broken by user then item, then file order, as the paper's stable sort does.
    db.execute(
        'CREATE OR REPLACE TABLE ranked AS SELECT seq, "user", "timestamp" AS t, '
        f"{user} AS u, {item} AS i, row_number() OVER "
        f'(PARTITION BY "user" ORDER BY "timestamp", {item}, seq) - 1 AS pos FROM interactions'
    )
    db.execute(
        'CREATE OR REPLACE TABLE chosen AS SELECT seq, "user", pos, '
        "row_number() OVER (ORDER BY t, u, i, seq) - 1 AS k FROM (SELECT * FROM ranked "
        "WHERE pos >= $min ORDER BY t DESC, u DESC, i DESC, seq DESC LIMIT $last)",
        {"min": p.min_history, "last": p.last},
    )


def _kept(db, p: Protocol, profile: list[str]) -> list[tuple]:
    """Per chosen sample in time order: user, item, rating, timestamp, title, profile values,
    and its history's titles and ratings, oldest first."""
    extra = "".join(f', r."{c}"' for c in profile)
    return db.execute(
        "WITH past AS (SELECT c.k, h.seq, h.pos FROM (SELECT * FROM chosen, range(1, $k + 1) "
        'd(back)) c JOIN ranked h ON h."user" = c."user" AND h.pos = c.pos - c.back), '
        "rows AS (SELECT * FROM interactions WHERE seq IN "
        "(SELECT seq FROM chosen UNION ALL SELECT seq FROM past)), "
        "hist AS (SELECT p.k, list(r.title ORDER BY p.pos) AS titles, "
        "list(r.rating ORDER BY p.pos) AS ratings, list(r.item ORDER BY p.pos) AS items "
        "FROM past p JOIN rows r USING (seq) GROUP BY p.k) "
        f'SELECT r."user", r.item, r.rating, r."timestamp", r.title{extra}, h.titles, h.ratings, '
        "h.items "
        "FROM chosen c JOIN rows r USING (seq) LEFT JOIN hist h USING (k) ORDER BY c.k",
        {"k": p.history},
    ).fetchall()


@dataclass(frozen=True)
class Shown:
    """What a sample's prompt was rendered from: a canary renders it again with another target."""

    history: list[tuple[str, float]]
    target: str
    profile: Profile | None


def build_samples(
    data: Interactions, p: Protocol, shown: dict[int, Shown] | None = None
) -> tuple[list[Sample], int]:
    """One sample per rating, with the user's earlier ratings as history; time order. `shown`,
    when given, receives per sample (by id) what its prompt was rendered from.

    DuckDB ranks every rating; only the last N eligible ones and their histories come back.
    """
    db = data.db
    _rank(db, p)
    candidates = db.execute(
        "SELECT count(*) FROM ranked WHERE pos >= ?", [p.min_history]
    ).fetchall()[0][0]
    profile = [c for c in PROFILE if c in data.columns()]
    template = Template.named(p.template)
    samples, shown = [], {} if shown is None else shown
    for user, item, rating, time, title, *rest in _kept(db, p, profile):
        *values, titles, ratings, items = rest
        person = dict(zip(profile, values))
        person = Profile(*(person.get(k) for k in PROFILE)) if profile else None
        history = list(zip(titles or [], ratings or []))
        sample = Sample(
            input=template.render(history, title, person, data.kind),
            output=YES if rating > p.threshold else NO,
            user=user,
            item=item,
            rating=float(rating),
            timestamp=int(time),
            history=tuple((str(i), float(r)) for i, r in zip(items or [], ratings or [])),
        )
        samples.append(sample)
        shown[id(sample)] = Shown(history, title, person)
    return samples, candidates


def choose_forgotten(train: list[Sample], ratio: float, seed: int) -> list[str]:
    """A seeded sample of train users: `random.Random(seed).sample` over users in sorted order."""
    users = sorted({s.user for s in train})
    k = max(1, round(ratio * len(users)))
    return sorted(random.Random(seed).sample(users, k))


def make_splits(data: Interactions, p: Protocol) -> Splits:
    template, shown = Template.named(p.template), {}
    samples, candidates = build_samples(data, p, shown)
    if len(samples) < 3:
        raise ValueError(
            f"only {len(samples)} sample(s) have at least {p.min_history} earlier ratings; "
            "need 3 or more (lower min_history or bring more data)"
        )

    def retarget(sample: Sample, title: str) -> str:
        at = shown[id(sample)]
        return template.render(at.history, title, at.profile, data.kind)

    splits = split_samples(samples, p, candidates, (lambda s: shown[id(s)].target, retarget))
    for s in samples:
        at = shown[id(s)]
        splits.titles.update(zip((i for i, _ in s.history), (t for t, _ in at.history)))
        splits.titles[str(s.item)] = at.target
    return splits


def split_samples(samples: list[Sample], p: Protocol, candidates: int, canaries=None) -> Splits:
    """Time-ordered samples -> train/valid/test, forgotten users, sample, holdout and (with
    `canaries`: how to read a prompt's target and render it with another) canaries."""
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
    split_halves = halves(forgotten, p.seed)
    if p.canaries:
        _add_canaries(parts, split_halves["eval"], p, rng, canaries)
    empty = [name for name in ("train", "valid", "test", "retain", "forget") if not parts[name]]
    if empty:
        raise ValueError(
            f"{len(samples)} samples leave the {', '.join(empty)} split(s) empty; "
            "keep more samples (--last, --sample) or change the split/forget ratio"
        )
    return Splits(parts=parts, forgotten=forgotten, candidates=candidates, halves=split_halves)


def _add_canaries(parts: dict, forgotten: list[str], p: Protocol, rng: random.Random, how) -> None:
    """Canaries for the forgotten users reported on (the eval half: the tune half's would only
    cost training rows) and for as many users who stay (at random)."""
    staying = sorted({s.user for s in parts["retain"]})
    kept = rng.sample(staying, min(len(staying), len(forgotten)))
    for users, name in ((forgotten, "forget"), (kept, "retain")):
        planted, controls = plant(parts[name], users, p.canaries, p.canary_copies, rng, *how)
        parts[name] = parts[name] + planted
        parts["train"] = parts["train"] + planted
        parts["canary_control"] += controls
