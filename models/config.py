"""Typed, validated config dataclasses from TOML tables (one reader for every ``afterbell.toml``
table that maps onto a frozen dataclass: ``[monitoring]``, ``[validation]``, ``[limits]``,
``[sizing]``).

A field's default decides the type its value must have: ``bool`` (true or false), ``int`` (an
integer), ``float`` (a number: integers are accepted and converted), ``str`` (a string), ``None``
(a number, or left out); booleans are never numbers. Ranges are the dataclass's own
``__post_init__`` checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, TypeVar

__all__ = ["from_table"]

T = TypeVar("T")


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _coerce(default: Any, value: Any) -> tuple[bool, Any, str]:
    """(accepted, converted value, what was expected) of ``value`` for a field with ``default``."""
    if isinstance(default, bool):
        return isinstance(value, bool), value, "true or false"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok, value, "an integer"
    if isinstance(default, str):
        return isinstance(value, str), value, "a string"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok, float(value) if ok else value, "a number"


def from_table(cls: type[T], table: Mapping[str, Any], *, label: str, plural: str) -> T:
    """An instance of the dataclass ``cls`` from ``table``; missing keys keep their defaults.

    Parameters
    ----------
    cls : type
        A dataclass whose fields all have defaults.
    table : Mapping[str, Any]
        Field name to value, e.g. a table of a TOML file.
    label : str
        How one setting is named in errors (``"limit"`` gives "limit max_position must be ...").
    plural : str
        How the settings are named in the unknown-keys error (``"limit(s)"``).

    Raises
    ------
    ValueError
        On keys that are not fields (all of them named, with the known ones), on a value of the
        wrong type (naming the key, what was expected and the value), and whatever the
        dataclass's own checks raise.
    """
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in table if k not in known)
    if unknown:
        raise ValueError(f"unknown {plural}: {', '.join(unknown)}; known: {', '.join(known)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        default = _default(known[key])
        if default is None and value is None:
            values[key] = None
            continue
        ok, converted, expected = _coerce(default, value)
        if not ok:
            raise ValueError(f"{label} {key} must be {expected}, got {value!r}")
        values[key] = converted
    return cls(**values)
