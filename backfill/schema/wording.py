"""The words of a failure: JSON type names, expectations, lengths, values as Miso shows them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

_JSON_NAMES: Final[Mapping[type, str]] = {
    mi.StrType: "string",
    mi.LiteralType: "string",
    mi.RawType: "string",
    mi.FloatType: "number",
    mi.IntType: "integer",
    mi.BoolType: "boolean",
    mi.ListType: "array",
    mi.DictType: "object",
    mi.StructType: "object",
}


def _json_types(info: mi.Type) -> list[str]:
    if isinstance(info, mi.Metadata):
        return list((info.extra or {}).get("json", [])) or _json_types(info.type)
    if isinstance(info, mi.UnionType):
        return [name for member in info.types for name in _json_types(member)]
    return [_JSON_NAMES.get(type(info), "value")]


def _type_miso(expected: list[str], value: Any) -> str:
    names = ", ".join(f"'{name}'" for name in dict.fromkeys(expected))
    return (
        f"The attribute was expected to be of type '{names}' "
        f"but type '{_json_type_of(value)}' was given."
    )


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for python_type, name in (
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
    ):
        if isinstance(value, python_type):
            return name
    return "object"


def _extra(info: mi.Type, key: str) -> str | None:
    """What a field's `Meta(extra=...)` says for the error messages (see `_describe`)."""
    if isinstance(info, mi.Metadata) and info.extra and key in info.extra:
        return str(info.extra[key])
    return None


def _pattern_miso(info: mi.Type) -> str:
    custom = _extra(info, "miso")
    if custom:
        return custom
    if isinstance(info, mi.Metadata):
        return _pattern_miso(info.type)
    if isinstance(info, mi.LiteralType):
        values = ", ".join(_show(v) for v in info.values)
        return f"Does not have a value in the enumeration [{values}]."
    return "Does not match the expected pattern."


def _describe(info: mi.Type) -> str:
    if isinstance(info, mi.Metadata):
        return _extra(info, "expected") or _describe(info.type)
    if isinstance(info, mi.UnionType):
        members = [m for m in info.types if not _shadowed(m, info)]
        return " or ".join(_describe(m) for m in members)
    if isinstance(info, mi.StrType):
        return "a string" + _length(info)
    if isinstance(info, mi.ListType):
        return f"an array of {_plural(info.item_type)}"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(_show(v) for v in info.values)
    return _NOUNS.get(type(info), ("a value", "values"))[0]


def _plural(info: mi.Type) -> str:
    if isinstance(info, mi.Metadata):
        return _plural(info.type)
    if isinstance(info, mi.UnionType):
        return " or ".join(_plural(m) for m in info.types if not _shadowed(m, info))
    if isinstance(info, mi.ListType):
        return f"arrays of {_plural(info.item_type)}"
    return _NOUNS.get(type(info), ("a value", "values"))[1]


_NOUNS: Final[Mapping[type, tuple[str, str]]] = {
    mi.StrType: ("a string", "strings"),
    mi.LiteralType: ("a string", "strings"),
    mi.FloatType: ("a number", "numbers"),
    mi.IntType: ("an integer", "integers"),
    mi.BoolType: ("a boolean", "booleans"),
    mi.DictType: ("an object", "objects"),
    mi.StructType: ("an object", "objects"),
}


def _shadowed(member: mi.Type, union: mi.UnionType) -> bool:
    """An integer is a number: `int | float` reads as "a number"."""
    return isinstance(member, mi.IntType) and any(isinstance(m, mi.FloatType) for m in union.types)


def _length(info: mi.StrType) -> str:
    low, high = info.min_length, info.max_length
    if low is not None and high is not None:
        return f" of {low} to {high} characters"
    if high is not None:
        return f" of at most {high} characters"
    if low is not None:
        return f" of at least {low} characters"
    return ""


_SHOW_LIMIT: Final = 60


def _show(value: Any) -> str:
    """The offending value as JSON, shortened: a reason is one line of a report."""
    if isinstance(value, str) and len(value) > _SHOW_LIMIT:
        return f"a string of {len(value)} characters starting {_show(value[:20])}"
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def attribute_type(value: object) -> str | None:
    """The type family Miso keeps per key: a scalar and an array of it are the same family."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        if not value:
            return None
        first = value[0]
        return "array of objects" if isinstance(first, dict) else attribute_type(first)
    return "unknown"
