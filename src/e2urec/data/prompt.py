"""The one prompt builder: a template turns (profile, history, target) into a prompt.

`paper` is the paper's "simple" template, byte for byte: the history rendered as `str(list)` of
"i. Title (N stars)" strings because the paper's code does so (models trained on it are
compared across projects, so the quirk stays). `compact` puts the profile on one line and each
rated item on its own with the rating in words: a pretrained LM reads "liked it" far better
than it averages "(4 stars)", in 0.6x the tokens (benchmarks/RESULTS.md, issue 36). Any other
template is a user's Jinja2 file over the same variables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
# (lowest rating, words): 5 loved, 4 liked, 3 okay, 2 disliked, 1 hated; half stars round up.
WORDS = ((4.5, "loved it"), (3.5, "liked it"), (2.5, "found it okay"), (1.5, "disliked it"))
VARIABLES = ("profile", "history", "target", "kind")

COMPACT = """\
{%- set who = [profile.gender, profile.age and "age " ~ profile.age, profile.job] | select | list -%}
{%- if who %}User: {{ who | join(", ") }}.
{% endif -%}
{{ kind.plural | capitalize }} they rated, oldest first:
{% for item in history %}- {{ item.title }}: {{ item.words }}
{% endfor -%}
Will they like {{ target }}? Answer yes or no."""


def words(rating: float) -> str:
    return next((text for low, text in WORDS if rating >= low), "hated it")


class Template:
    """A named prompt template: `render` makes every prompt of a data folder, of the tiny
    tokenizer's texts and of the service. `digest` changes with the text it renders by."""

    def __init__(self, name: str, source: str | None = None, where: str = ""):
        self.name, self.source = name, source
        text = source if source is not None else "paper: build_prompt"
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self._jinja = None if source is None else _compile(source, where or name)
        if self._jinja is not None:  # a template that breaks on any sample breaks here
            self.render(
                [("A Title (1999)", 4.0), ("Another (2001)", 2.0)],
                "Third (2003)",
                Profile("female", "25", "writer"),
                MOVIE,
                where or name,
            )
            self.render([], "Third (2003)", Profile(), BOOK, where or name)

    @classmethod
    def named(cls, spec: str) -> Template:
        """ "paper", "compact", or the path of a Jinja2 template file."""
        if spec == "paper":
            return cls("paper")
        if spec == "compact":
            return cls("compact", COMPACT)
        path = Path(spec)
        if not path.is_file():
            raise ValueError(
                f"template must be 'paper', 'compact' or a Jinja2 template file; "
                f"{spec!r} is neither (no such file)"
            )
        try:
            return cls(str(path), path.read_text(encoding="utf-8"), str(path))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None

    @classmethod
    def of(cls, record: dict | None) -> Template:
        """From a manifest's record (`describe`); a folder prepared before templates: paper."""
        if not record or record.get("source") is None:
            return cls("paper")
        return cls(record["name"], record["source"])

    def describe(self) -> dict:
        return {"name": self.name, "digest": self.digest, "source": self.source}

    def render(
        self,
        history: Sequence[tuple[str, float]],
        target: str,
        profile: Profile | None = None,
        kind: ItemKind = MOVIE,
        where: str = "",
    ) -> str:
        if self._jinja is None:
            return build_prompt(history, target, profile, kind)
        p = profile or Profile()
        shown = [{"title": t, "rating": _number(r), "words": words(r)} for t, r in history]
        context = {
            "profile": {"gender": p.gender or "", "age": p.age or "", "job": p.job or ""},
            "history": shown,
            "target": target,
            "kind": {"noun": kind.noun, "plural": kind.plural, "verb": kind.verb},
        }
        try:
            text = self._jinja.render(context).strip()
        except jinja2.TemplateError as err:  # an unknown attribute, a sandbox refusal, ...
            raise ValueError(f"{where or self.name}: {err.message}") from None
        except (ArithmeticError, LookupError, TypeError, ValueError) as err:
            raise ValueError(f"{where or self.name}: {type(err).__name__}: {err}") from None
        if not text:
            raise ValueError(f"{where or self.name}: the template renders an empty prompt")
        return text


def _number(rating: float):
    return int(rating) if float(rating).is_integer() else rating


class _Documented(ImmutableSandboxedEnvironment):
    """A sandbox (a template is a user's file, and a manifest's copy is rendered by the
    service) in which only the documented fields resolve: `profile.items` or `target.upper`
    would render a method's repr, with a memory address that changes every run."""

    def getattr(self, obj, attribute):
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return self.undefined(obj=obj, name=attribute)

    def getitem(self, obj, argument):
        if isinstance(obj, dict) and argument in obj:
            return obj[argument]
        if isinstance(obj, list | str) and isinstance(argument, int | slice):
            return obj[argument]
        return self.undefined(obj=obj, name=argument)


def _compile(source: str, where: str) -> jinja2.Template:
    env = _Documented(undefined=jinja2.StrictUndefined, autoescape=False)
    try:
        unknown = sorted(jinja2.meta.find_undeclared_variables(env.parse(source)) - set(VARIABLES))
        if unknown:
            raise ValueError(
                f"{where}: unknown variable(s) {', '.join(unknown)} "
                f"(a template receives {', '.join(VARIABLES)})"
            )
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"{where}, line {err.lineno}: {err.message}") from None


def template_prompts(
    titles: Sequence[str], kind: ItemKind, history: int, template: Template | None = None
) -> list[str]:
    """The prompt template filled with catalogue titles and every star value: text with the
    prompts' words that no user owns (the tiny backbone's tokenizer is trained on it, so that
    the exact methods start from a vocabulary none of the forgotten users' data shaped)."""
    render = (template or Template("paper")).render
    out, step = [], history + 1
    for offset in range(len(STAR_VALUES)):  # each title beside each star value once
        for i in range(0, len(titles), step):
            chunk = titles[i : i + step]
            if len(chunk) < 2:
                continue
            stars_ = STAR_VALUES[offset:] + STAR_VALUES[:offset]
            shown = [(title, stars_[j % len(stars_)]) for j, title in enumerate(chunk[:-1])]
            out.append(render(shown, chunk[-1], kind=kind))
    return out
