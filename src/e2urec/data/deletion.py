"""Deletion requests as users make them: pure functions choosing which train samples to forget.

User-level deletion (the paper's setting) removes every train sample of the given users.
Interaction-level deletion removes the samples whose target is a given (user, item) pair and,
because a rating is also shown in the history of the user's next prompts, those prompts too.
`Eraser` is that rule, and every part of the package that decides what a deletion removes
(selection here, a deployment's purge, its ledger check and its requests) applies it.
"""

from __future__ import annotations

import ast
import csv
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from e2urec.data.prompt import stars
from e2urec.data.sample import Sample

SHOWN = 50  # unknown ids listed in a refusal before "and N more"
_TARGET = re.compile(r"\*\*\*(.*)\*\*\*")
_ENTRY = re.compile(r"^\d+\. ")


@dataclass(frozen=True)
class DeletionRequest:
    users: tuple[str, ...] = ()
    interactions: tuple[tuple[str, str], ...] = ()  # (user, item)

    def __post_init__(self):
        if not self.users and not self.interactions:
            raise ValueError("a deletion request needs users or (user, item) interactions")

    def to_dict(self) -> dict:
        return {"users": list(self.users), "interactions": [list(p) for p in self.interactions]}


@dataclass
class Selection:
    forget: list[Sample]
    retain: list[Sample]
    targets: int  # samples whose target is a deleted interaction (all of them for users)
    history: int = 0  # further samples whose prompt shows a deleted interaction
    users: list[str] = field(default_factory=list)  # users touched by the request


def sample_key(s: Sample) -> tuple[str, str, int]:
    """What identifies a sample across files: the rating it was built from."""
    return (s.user, s.item, s.timestamp)


def parse_users(text: str) -> tuple[str, ...]:
    """'12, 45,12' -> ('12', '45'): order kept, duplicates dropped."""
    users = [u.strip() for u in text.split(",") if u.strip()]
    if not users:
        raise ValueError(f"no user ids in {text!r}")
    return tuple(dict.fromkeys(users))


def read_interactions(path: str | Path) -> tuple[tuple[str, str], ...]:
    """A CSV with `user` and `item` columns (others ignored) -> unique (user, item) pairs."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a CSV file with columns user,item")
    try:
        # utf-8-sig: a spreadsheet's byte order mark would otherwise glue itself to "user".
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return _pairs_of(path, csv.DictReader(fh))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from None


def _pairs_of(path: Path, reader: csv.DictReader) -> tuple[tuple[str, str], ...]:
    names = [(c or "").strip() for c in reader.fieldnames or []]
    missing = [c for c in ("user", "item") if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (need user,item)")
    reader.fieldnames = names
    pairs = []
    for row in reader:
        user, item = (str(row.get(c) or "").strip() for c in ("user", "item"))
        if not user or not item:
            empty = "user" if not user else "item"
            raise ValueError(f"{path}, line {reader.line_num}: no {empty} (a short or empty row)")
        pairs.append((user, item))
    if not pairs:
        raise ValueError(f"{path}: no interactions")
    return tuple(dict.fromkeys(pairs))


def unknown(request: DeletionRequest, train: Sequence[Sample]) -> tuple[list[str], list[tuple]]:
    """Users and interactions of the request that no sample of `train` has, as its target or
    in the history its prompt shows (a user's first ratings are only ever shown)."""
    users = {s.user for s in train}
    pairs = {(s.user, s.item) for s in train}
    pairs |= {(s.user, item) for s in train for item, _ in s.history}
    return (
        [u for u in request.users if u not in users],
        [p for p in request.interactions if p not in pairs],
    )


def check(request: DeletionRequest, train: Sequence[Sample], removed: Iterable[tuple] = ()) -> None:
    """Refuse, listing them, ids not in the training data or already forgotten (`removed`)."""
    removed = set(removed)
    live = [s for s in train if sample_key(s) not in removed]
    bad_users, bad_pairs = unknown(request, train)
    gone_users, gone_pairs = unknown(request, live)
    problems = []
    if bad_users:
        problems.append(f"user(s) not in the training data: {listing(bad_users)}")
    if bad_pairs:
        problems.append(
            f"interaction(s) (user/item) not in the training data: {listing(_pairs(bad_pairs))}"
        )
    again = [u for u in gone_users if u not in bad_users]
    again += _pairs(p for p in gone_pairs if p not in bad_pairs)
    if again:
        problems.append(f"already forgotten by an earlier request: {listing(again)}")
    if problems:
        raise ValueError("; ".join(problems) + ". Nothing was changed.")


def _pairs(pairs: Iterable[tuple]) -> list[str]:
    return [f"{u}/{i}" for u, i in pairs]


def listing(ids: Sequence[str]) -> str:
    """The first SHOWN ids, then how many more: a refusal of 10,000 ids stays one line."""
    text = ", ".join(map(str, ids[:SHOWN]))
    return text + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def shown_ratings(sample: Sample) -> list[str]:
    """The history entries of a prompt, as 'Title (N stars)'."""
    for line in sample.input.splitlines():
        if line.startswith("["):
            try:
                entries = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                return []
            return [_ENTRY.sub("", e) for e in entries if isinstance(e, str)]
    return []


def shown(sample: Sample) -> tuple[list[str], list[str]]:
    """(items, texts): the items whose ratings the prompt shows, as recorded with the sample; for
    a sample prepared before they were, the paper template's 'Title (N stars)' entries instead.
    A prompt shows a deleted rating (user, item) when its user's items or texts name it."""
    if sample.history:
        return [item for item, _ in sample.history], []
    return [], shown_ratings(sample)


def shown_as(sample: Sample) -> str | None:
    """How `sample`'s rating appears in the history of later prompts: 'Title (N stars)'."""
    found = _TARGET.search(sample.input)
    if found is None or sample.rating is None:
        return None
    return f"{found.group(1)} ({stars(sample.rating)})"


def select(
    train: Sequence[Sample],
    request: DeletionRequest,
    removed: Iterable[tuple] = (),
    history: bool = True,
) -> Selection:
    """Split `train` into forget (what the request removes) and retain (what stays).

    `removed` holds keys of samples earlier requests took out: they are in neither part.
    With `history`, prompts of the same user that show a deleted rating are forgotten too.
    """
    removed = set(removed)
    check(request, train, removed)
    live = [s for s in train if sample_key(s) not in removed]
    pairs = request.interactions
    rule = Eraser(frozenset(request.users), frozenset(pairs), frozenset(), history)
    if history:
        rule = replace(rule, shown=frozenset(map(tuple, shown_texts(live, pairs))))
    targets = [s for s in live if rule.names(s)]
    chosen = {sample_key(s) for s in live if rule.erases(s)}
    return Selection(
        forget=[s for s in live if sample_key(s) in chosen],
        retain=[s for s in live if sample_key(s) not in chosen],
        targets=len(targets),
        history=len(chosen) - len(targets),
        users=sorted({s.user for s in targets}),
    )


def _plain(*parts: str):
    return parts[0] if len(parts) == 1 else parts


@dataclass(frozen=True)
class Eraser:
    """Which samples a deletion erases: the one rule that selection, the purge, the ledger's
    check and a request's counts all apply.

    A sample goes when its user is erased, when its own rating (user, item) is, or, with
    `echoes`, when its prompt shows an erased rating of its user: by the (item, rating) pairs
    the sample records (`Sample.history`), or, for a sample prepared before those were recorded,
    by the 'Title (N stars)' text the rating shows as in the paper's prompts (`shown`: (user,
    text) pairs, worked out from the samples whose target the rating is). `key` says how ids are
    held: as themselves, or as the HMACs a deployment's ledger keeps instead.
    """

    users: frozenset
    pairs: frozenset  # (user, item), or their keys
    shown: frozenset = frozenset()  # (user, 'Title (N stars)'), or their keys
    echoes: bool = True
    key: Callable[..., Hashable] = _plain

    def names(self, s: Sample) -> bool:
        """The sample's user or its own rating is erased."""
        key = self.key
        return key(s.user) in self.users or key(s.user, s.item) in self.pairs

    def erases(self, s: Sample) -> bool:
        if not (self.users or self.pairs):
            return False  # nothing forgotten: no key to compute for each sample
        if self.names(s):
            return True
        if not self.echoes:
            return False
        key, (items, texts) = self.key, shown(s)
        if any(key(s.user, i) in self.pairs for i in items):
            return True
        return bool(self.shown) and any(key(s.user, t) in self.shown for t in texts)


def shown_texts(samples: Iterable[Sample], pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """How the deleted ratings `pairs` show in the paper prompts of their users' later samples:
    [user, 'Title (N stars)'], read off the samples whose target each rating is."""
    pairs = set(map(tuple, pairs))
    found = {(s.user, shown_as(s)) for s in samples if (s.user, s.item) in pairs}
    return sorted([u, text] for u, text in found if text)


def split_users(users: Sequence[str], n: int) -> list[list[str]]:
    """`users` in `n` successive requests of near-equal size (sizes differ by at most one)."""
    if not 1 <= n <= len(users):
        raise ValueError(f"cannot split {len(users)} forgotten user(s) into {n} request(s)")
    size, extra = divmod(len(users), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (i < extra)
        out.append(list(users[start:stop]))
        start = stop
    return out


def target_title(sample: Sample) -> str | None:
    """The title the prompt asks about (between *** ***)."""
    found = _TARGET.search(sample.input)
    return found.group(1) if found else None
