"""The one data contract: a prompt with its Yes/No answer and where it came from."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

YES, NO = "Yes.", "No."
FIELDS = ("input", "output", "user", "item", "rating", "timestamp", "history")
REQUIRED = FIELDS[:-1]  # files prepared before `history` was written hold the rest


@dataclass(frozen=True)
class Sample:
    input: str
    output: str
    user: str
    item: str
    rating: float | None  # None: not known (imported prompts may not say)
    timestamp: int
    # The (item, rating) pairs the prompt shows, oldest first: what deletion and the
    # history_mean rule read, whatever template wrote the prompt's text. An imported prompt's
    # pairs have rating None: its file names the items it shows, not how they were rated.
    history: tuple[tuple[str, float | None], ...] = ()

    @property
    def label(self) -> int:
        return 1 if self.output == YES else 0


def write_jsonl(samples: Iterable[Sample], path: str | Path, tmp: Path | None = None) -> None:
    """Write atomically: a crash leaves the old file (or none), never half a file. The rows go
    to a temporary file beside `path` (`tmp`, when the caller has recorded its name), synced to
    disk before it replaces `path`: a power cut leaves the old file, not an empty one."""
    path = Path(path)
    if tmp is None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    else:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for s in samples:
                row = {f: getattr(s, f) for f in FIELDS}  # asdict() deep-copies: slow at 1M
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: str | Path) -> list[Sample]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (run `e2urec prepare` first?)")
    samples = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [f for f in REQUIRED if f not in row]
                if missing:
                    raise ValueError(f"missing field(s) {', '.join(missing)}")
                if row["output"] not in (YES, NO):
                    raise ValueError(f"output must be {YES!r} or {NO!r}, got {row['output']!r}")
                samples.append(
                    Sample(
                        input=str(row["input"]),
                        output=row["output"],
                        user=str(row["user"]),
                        item=str(row["item"]),
                        rating=_rating(row["rating"]),
                        timestamp=int(row["timestamp"]),
                        history=_history(row.get("history")),
                    )
                )
            except (json.JSONDecodeError, ValueError, TypeError) as err:
                raise ValueError(f"{path}, line {lineno}: {err}") from None
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def _rating(value) -> float | None:
    return None if value is None else float(value)


def _history(value) -> tuple[tuple[str, float | None], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and not isinstance(p[1], bool) for p in value
    ):
        raise ValueError("history must be a list of [item, rating] pairs")
    return tuple((str(item), _rating(rating)) for item, rating in value)
