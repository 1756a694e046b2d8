"""The one prompt builder: the paper's "simple" template, byte for byte.

The history is rendered as `str(list)` of "i. Title (N stars)" strings because the paper's
code does so; models trained on it are compared across projects, so the quirk stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PRONOUNS = {
    "male": ("He", "he", "His"),
    "female": ("She", "she", "Her"),
}


@dataclass(frozen=True)
class ItemKind:
    noun: str  # "movie"
    plural: str  # "movies"
    verb: str  # "watched"


MOVIE = ItemKind("movie", "movies", "watched")
BOOK = ItemKind("book", "books", "read")


@dataclass(frozen=True)
class Profile:
    gender: str | None = None  # "male" / "female"
    age: str | None = None
    job: str | None = None


def stars(rating: float) -> str:
    value = int(rating) if float(rating).is_integer() else rating
    return f"{value} star" if value == 1 else f"{value} stars"


def profile_sentence(profile: Profile) -> str:
    _, _, possessive = PRONOUNS.get(profile.gender or "", (None, None, "The user's"))
    parts = []
    if profile.gender:
        parts.append(f"The user is a {profile.gender}.")
    if profile.job:
        parts.append(f"{possessive} job is {profile.job}.")
    if profile.age:
        parts.append(f"{possessive} age is {profile.age}.")
    return " ".join(parts)


def build_prompt(
    history: Sequence[tuple[str, float]],
    target: str,
    profile: Profile | None = None,
    kind: ItemKind = MOVIE,
) -> str:
    """`history` is (title, rating) pairs, oldest first, already cut to the last K."""
    profile = profile or Profile()
    subject, pronoun, _ = PRONOUNS.get(profile.gender or "", ("The user", "the user", None))
    hist = str([f"{i}. {title} ({stars(r)})" for i, (title, r) in enumerate(history)])
    lines = [
        f"{subject} {kind.verb} the following {kind.plural} in order in the past, and rated them:",
        hist,
        f"Based on the {kind.plural} {pronoun} has {kind.verb}, deduce if {pronoun} will like "
        f"the {kind.noun} ***{target}***.",
        f"Note that more stars the user rated the {kind.noun}, the user liked the {kind.noun} more.",
        "You should ONLY tell me yes or no.",
    ]
    head = profile_sentence(profile)
    return "\n".join([head, *lines] if head else lines)


KINDS = {kind.noun: kind for kind in (MOVIE, BOOK)}
STAR_VALUES = (0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5)


def template_prompts(titles: Sequence[str], kind: ItemKind, history: int) -> list[str]:
    """The prompt template filled with catalogue titles and every star value: text with the
    prompts' words that no user owns (the tiny backbone's tokenizer is trained on it, so that
    the exact methods start from a vocabulary none of the forgotten users' data shaped)."""
    out, step = [], history + 1
    for offset in range(len(STAR_VALUES)):  # each title beside each star value once
        for i in range(0, len(titles), step):
            chunk = titles[i : i + step]
            if len(chunk) < 2:
                continue
            stars_ = STAR_VALUES[offset:] + STAR_VALUES[:offset]
            shown = [(title, stars_[j % len(stars_)]) for j, title in enumerate(chunk[:-1])]
            out.append(build_prompt(shown, chunk[-1], kind=kind))
    return out
