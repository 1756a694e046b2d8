"""Prompts made elsewhere (TALLRec/E2URec's Alpaca-style records): samples as they are.

Unlike the other sources, whose ratings become prompts through the protocol and a template,
each record here is already a sample: its prompt, its answer, whose it is and when. Nothing is
rendered, so the options that build prompts (a template, K, canaries) do not apply.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from pathlib import Path

from e2urec.data.sample import NO, YES, Sample

# TALLRec's prompt, byte for byte, with the linter comment its f-string swallowed after
# "the request.": every TALLRec model was trained on that text.
INTRO = (
    "Below is an instruction that describes a task{with_input}. Write a response that "
    "appropriately completes the request.  # noqa: E501\n\n### Instruction:\n{instruction}\n\n"
)
WITH_INPUT = ", paired with an input that provides further context"


def alpaca_prompt(instruction: str, given: str) -> str:
    """The prompt TALLRec builds from `instruction` and `input`, up to the response."""
    head = INTRO.format(with_input=WITH_INPUT if given else "", instruction=instruction)
    middle = f"### Input:\n{given}\n\n" if given else ""
    return f"{head}{middle}### Response:\n"


def read_prompts(path: str | Path, answers: tuple[str, ...]) -> tuple[list[Sample], bool]:
    """The samples of a JSON array or JSON Lines file of records, in time order (ties in file
    order), and whether the records name the items their prompts show (`history`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a JSON or JSON Lines file of prompts)")
    samples, shows = [], None
    for where, record in _records(path):
        try:
            sample, has_history = _sample(record, answers)
        except ValueError as err:
            raise ValueError(f"{path}, {where}: {err}") from None
        if shows is None:
            shows, first = has_history, where
        elif shows != has_history:
            told = "given here, not" if has_history else "missing here, given"
            raise ValueError(
                f"{path}, {where}: history: {told} in {first}; give it for every record or none"
            )
        samples.append(sample)
    if not samples:
        raise ValueError(f"{path}: no records")
    samples.sort(key=lambda s: s.timestamp)  # stable: file order within a time
    return samples, bool(shows)


def checksum(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _records(path: Path):
    """(where, record) pairs: "record N" of a JSON array, "line N" of JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
        yield from ((f"record {n}", r) for n, r in enumerate(records, 1))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not valid JSON ({err.msg})") from None


def _sample(record, answers: tuple[str, ...]) -> tuple[Sample, bool]:
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    output = _text(record, "output")
    answers = tuple(a.strip() for a in answers)
    if output not in answers:
        shown = " or ".join(repr(a) for a in answers)
        raise ValueError(f"output: {output!r} is neither answer ({shown}; set them with --answers)")
    history = record.get("history")
    rating = record.get("rating")
    if rating is not None and not _number(rating):
        raise ValueError(f"rating: must be a number, got {rating!r}")
    sample = Sample(
        input=_prompt(record),
        output=YES if output == answers[0] else NO,
        user=_id(record, "user"),
        item=_id(record, "item"),
        rating=None if rating is None else float(rating),
        timestamp=_timestamp(record),
        history=tuple((item, None) for item in _shown(history or [])),
    )
    return sample, history is not None


def _shown(history) -> list[str]:
    if not isinstance(history, list):
        raise ValueError("history: must be a list of item ids, oldest first")
    for n, item in enumerate(history, 1):
        if isinstance(item, bool) or not isinstance(item, (str, int)) or not str(item).strip():
            raise ValueError(f"history: entry {n} must be an item id, got {item!r}")
    return [str(item).strip() for item in history]


def _prompt(record: dict) -> str:
    if "instruction" in record:
        given = record.get("input", "")
        if not isinstance(given, str):
            raise ValueError(f"input: must be text, got {type(given).__name__}")
        return alpaca_prompt(_text(record, "instruction"), given)
    if "input" not in record:
        raise ValueError("input: missing (the prompt: input, or instruction and input)")
    return _text(record, "input")


def _text(record: dict, field: str) -> str:
    if field not in record:
        raise ValueError(f"{field}: missing")
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field}: must be non-empty text, got {value!r}")
    return value.strip() if field == "output" else value


def _id(record: dict, field: str) -> str:
    if field not in record:
        raise ValueError(f"{field}: missing")
    value = record[field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError(f"{field}: must be an id (text or a whole number), got {value!r}")
    return str(value).strip()


def _timestamp(record: dict) -> int:
    if "timestamp" not in record:
        raise ValueError("timestamp: missing")
    value = record["timestamp"]
    if not _number(value) or float(value) != int(value):
        raise ValueError(f"timestamp: must be whole unix seconds, got {value!r}")
    return int(value)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
