"""One validator for the settings blocks of our features: a recipe's mapping checked against a dataclass.

Each feature declares its settings as a dataclass (types in the annotations, allowed values in a field's
`metadata={"choices": ...}`); `parse_dataclass` rejects a non-mapping, unknown and missing keys, values of the wrong
type and values outside the choices, and names the setting as its recipe spells it (`key_name`). What only the
feature knows (ranges, settings that depend on each other) it checks after.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def _kind(value) -> str:
    return type(value).__name__


def _coerce(value, annotation, name: str):
    """`value` as `annotation` (bool, int, float, str, X | None, tuple[X, ...], list[X]); ValueError if it is not."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, name)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{name} must be a non-empty list, got {value!r}")
        items = [_coerce(v, args[0], name) for v in value]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{name}: unsupported settings type {annotation!r}")
    if not ok:
        raise ValueError(f"{name} must be {annotation.__name__}, got {value!r} ({_kind(value)})")
    return value


def parse_dataclass(cls: type[T], raw: Any, where: str, key_name: Callable[[str], str] = str) -> T:
    """`cls(**raw)` after checking `raw` against the dataclass; errors name `where` or the setting (`key_name(key)`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {_kind(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(key_name(k) for k in unknown)}; "
                         f"known: {', '.join(key_name(k) for k in fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ValueError(f"{key_name(name)} is required")
            continue
        value = _coerce(raw[name], hints[name], key_name(name))
        choices = field.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{key_name(name)}={value!r}; expected one of {list(choices)}")
        values[name] = value
    return cls(**values)
