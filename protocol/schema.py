"""Turning JSON objects into message dataclasses, checking every field on the way.

Each dataclass field declares its type in the annotation and its bounds in
``field(metadata=bounds(...))``; ``from_json_object`` reads both, so a
message's definition is also its validator and nothing is checked by hand
twice. Unknown fields are rejected: a typo such as ``stpes`` must not silently
fall back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
import typing
from enum import Enum
from typing import Any, TypeVar, Union

from .enums import ErrorCode
from .errors import ProtocolError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def bounds(
    low: float | None = None,
    high: float | None = None,
    max_length: int | None = None,
    max_items: int | None = None,
    max_keys: int | None = None,
) -> dict[str, Any]:
    """Field metadata: numeric range (inclusive), string length, list length, map size.

    They reach inside containers, so that a map of lists of names is bounded at every level: a
    list's strings (and a map's keys and string values) are at most ``max_length``, a map's lists at
    most ``max_items`` long."""
    return {"low": low, "high": high, "max_length": max_length, "max_items": max_items, "max_keys": max_keys}


def to_json_object(message: object) -> dict[str, Any]:
    """A dataclass as plain JSON values (enums as their values, nested dataclasses as objects)."""
    return {f.name: _to_json(getattr(message, f.name)) for f in dataclasses.fields(message)}  # type: ignore[arg-type]


def _to_json(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_object(value)
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def from_json_object(cls: type[T], data: object, path: str = "") -> T:
    """Build ``cls`` from a JSON object, raising ``ProtocolError`` on any mismatch."""
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{path or 'message'} must be a JSON object")
    hints, fields = _shape(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"unknown field {_join(path, shown(unknown[0]))}")
    values: dict[str, Any] = {}
    for name, spec in fields.items():
        where = _join(path, name)
        if name not in data:
            if spec.default is _MISSING and spec.default_factory is _MISSING:
                raise ProtocolError(ErrorCode.MISSING_FIELD, f"missing field {where}")
            continue
        values[name] = _convert(hints[name], data[name], where, spec.metadata)
    return cls(**values)


@functools.cache
def _shape(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """A message class's resolved annotations and fields, worked out once: resolving the annotations
    costs more than decoding a small message, and a client may send thousands."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def shown(text: str, limit: int = 60) -> str:
    """Untrusted text fit to quote in an error or a log line: control characters and lone surrogates
    escaped (no forged lines), at most ``limit`` characters."""
    clipped = text[:limit]
    escaped = clipped.encode("unicode_escape").decode("ascii") if not clipped.isprintable() else clipped
    escaped = escaped.encode("utf-8", "backslashreplace").decode("utf-8")
    return escaped + (f"... ({len(text)} characters)" if len(text) > limit else "")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(kind: Any, value: Any, where: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where, meta)
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a list")
        limit = meta.get("max_items")
        if limit is not None and len(value) > limit:
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE, f"{where} has {len(value)} items, at most {limit} allowed"
            )
        (item,) = typing.get_args(kind)
        inner = {"max_length": meta.get("max_length")}  # each string's length; a list's own bounds stop here
        return [_convert(item, v, f"{where}[{i}]", inner) for i, v in enumerate(value)]
    if origin is dict:
        return _convert_map(kind, value, where, meta)
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            choices = ", ".join(repr(m.value) for m in kind)
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"{where} must be one of {choices}, got {value!r}"
            ) from None
    if dataclasses.is_dataclass(kind):
        return from_json_object(kind, value, where)
    if kind is bool:
        if not isinstance(value, bool):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be an integer")
        return _in_range(value, where, meta)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a finite number")
        if isinstance(value, int) and abs(value) > FLOAT_MAX:  # float() of it raises OverflowError
            low, high = meta.get("low"), meta.get("high")
            raise ProtocolError(
                ErrorCode.OUT_OF_RANGE,
                f"{where} must be between {low} and {high}, got an integer beyond 1e308",
            )
        if not math.isfinite(value):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a finite number")
        return _in_range(float(value), where, meta)
    if kind is str:
        if not isinstance(value, str):
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a string")
        limit = meta.get("max_length")
        if limit is not None and len(value) > limit:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"{where} is {len(value)} characters, at most {limit} allowed"
            )
        try:  # JSON's \ud800 escapes decode to lone surrogates, which no encoder or tokenizer accepts
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} is not valid Unicode text") from None
        return value
    if kind is Any or kind is object:
        return value
    raise TypeError(f"unsupported field type {kind!r} for {where}")  # a bug in a message definition


def _convert_map(kind: Any, value: Any, where: str, meta: typing.Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object whose keys are strings and whose values all have one type (``dict[str, V]``)."""
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{where} must be a JSON object")
    limit = meta.get("max_keys")
    if limit is not None and len(value) > limit:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{where} has {len(value)} keys, at most {limit} allowed")
    _key_kind, item = typing.get_args(kind) or (str, Any)
    inner = {name: bound for name, bound in meta.items() if name != "max_keys"}
    converted: dict[str, Any] = {}
    for key, item_value in value.items():
        key = _convert(str, key, f"a key of {where}", {"max_length": meta.get("max_length")})
        converted[key] = _convert(item, item_value, _join(where, shown(key)), inner)
    return converted


FLOAT_MAX = sys.float_info.max
"""The largest float: a JSON integer beyond it has no float value."""


def _in_range(value: float, where: str, meta: typing.Mapping[str, Any]) -> Any:
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{where} must be between {low} and {high}, got {value}")
    return value
