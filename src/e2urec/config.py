"""Config dataclasses: built from dicts/YAML with unknown keys refused, overridden by `key=value`."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Turn a YAML or command-line value into the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(value, dict) and (origin in (tuple, list) or hint in (bool, int, float, str)):
        # `name.key=value` (parse_assignments) or a YAML mapping where one value belongs: bool()
        # of it would read True, str() its text.
        raise ValueError(f"{name}: takes one value, not the options {', '.join(map(str, value))}")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        inner = args[0] if args else str
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, inner, name) for v in items)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return hint(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {value!r} as {hint.__name__}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build `cls` from a mapping, refusing keys the dataclass does not have."""
    data = dict(data or {})
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def parse_assignments(items: list[str] | None, where: str = "config") -> dict[str, Any]:
    """`key=value` or `section.key=value` strings -> a nested dict of strings; the values are
    checked where a dataclass is built from them."""
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"{where}: expected key=value or section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        *parents, leaf = key.strip().split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value.strip()
    return nested


def override(obj: T, assignments: list[str] | dict[str, Any], where: str = "config") -> T:
    """Return a copy of `obj` with `key=value` assignments applied (values checked again)."""
    pairs = (
        dict(assignments)
        if isinstance(assignments, dict)
        else parse_assignments(assignments, where)
    )
    merged = {**dataclasses.asdict(obj), **pairs}
    return from_dict(type(obj), merged, where)


def add_flags(parser, cls, helps: dict[str, str], metavars: dict[str, str] | None = None) -> None:
    """A `--field-name` flag for each field of the dataclass `cls`, its help showing the field's
    default (a None default is for the help text to explain); values stay strings for
    `from_dict` to read as the field's type and check. `metavars`: how a value is written."""
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None  # a required field: no default to show
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = helps.get(f.name, f.name)
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            metavar=(metavars or {}).get(f.name),
            help=text if default is None else f"{text} (default: {shown})",
        )


def given_flags(args, cls) -> dict[str, Any]:
    """The values of the flags `add_flags` made for `cls` that were given."""
    names = (f.name for f in dataclasses.fields(cls))
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of options at the top level")
    return data


def check_lora(rank: int, alpha: float, dropout: float) -> None:
    """Checked where configs are made: peft would refuse them only once training starts."""
    if rank < 1:
        raise ValueError(f"lora_rank must be at least 1, got {rank}")
    if alpha <= 0:
        raise ValueError(f"lora_alpha must be positive, got {alpha}")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {dropout}")


def check_training(epochs: int, lr: float, batch_size: int) -> None:
    """The checks every optimisation config shares."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
