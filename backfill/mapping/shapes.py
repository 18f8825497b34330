"""Source shapes: how a compiled mapping reads a field, and what "absent" means.

A CSV row is a list of text cells read by column index (known once the header is read); a JSON
record is a decoded object read by dotted path (`items.0.id`, `items.*.id`). Each shape writes
the lines of the generated function that read a source field, and copies the leftovers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from backfill.errors import UsageError
from backfill.mapping.codegen import Code
from backfill.mapping.refusals import RecordRefused

Getter = Callable[[Any], Any]


class Shape:
    always_text = False

    def prologue(self, code: Code) -> None:
        """Code run first on each record."""

    def read(self, code: Code, names: list[str], what: str) -> str:
        raise NotImplementedError

    def present(self, var: str) -> str:
        return f"{var} is not None and {var} != ''"

    def leftovers(self, code: Code, skip: set[str], prefixes: list[str], target: list[str]) -> None:
        raise NotImplementedError


class CsvShape(Shape):
    """A row of text cells, padded to the header's width; "" is absent."""

    always_text = True

    def __init__(self, columns: list[str], path: str) -> None:
        self.columns = columns
        self.path = path
        self.index: dict[str, int] = {}
        for i, name in enumerate(columns):
            self.index.setdefault(name, i)

    def prologue(self, code: Code) -> None:
        code.line(f"if len(src) != {len(self.columns)}:")
        with code.block():
            code.line(f"{code.fn(_fit(len(self.columns)), 'fit')}(src)")

    def read(self, code: Code, names: list[str], what: str) -> str:
        present = [self.index[n] for n in names if n in self.index]
        if not present:
            listed = ", ".join(self.columns) if self.columns else "(none)"
            missing = " or ".join(repr(n) for n in names)
            raise UsageError(
                f"{self.path}: the CSV header has no column {missing} ({what}); "
                f"its columns are: {listed}"
            )
        return " or ".join(f"src[{i}]" for i in present)

    def present(self, var: str) -> str:
        return var

    def leftovers(self, code: Code, skip: set[str], prefixes: list[str], target: list[str]) -> None:
        attributes = code.container(target)
        seen: set[str] = set()
        for i, name in enumerate(self.columns):
            if not name or name in skip or name in seen:
                continue
            seen.add(name)
            code.line(f"if src[{i}]:")
            with code.block():
                code.line(f"{attributes}[{_strip(name, prefixes)!r}] = src[{i}]")


def _fit(width: int) -> Callable[[list[str]], None]:
    def fit(row: list[str]) -> None:
        n = len(row)
        if n < width:
            row.extend([""] * (width - n))  # missing trailing columns are absent values
        elif any(row[width:]):
            raise RecordRefused(f"the row has {n} fields, the header has {width}")

    return fit


class JsonShape(Shape):
    """A decoded JSON object; null and "" are absent."""

    def read(self, code: Code, names: list[str], what: str) -> str:
        if len(names) == 1 and "." not in names[0] and "*" not in names[0]:
            return f"src.get({names[0]!r})"
        return f"{code.fn(_json_getter(names), 'get')}(src)"

    def leftovers(self, code: Code, skip: set[str], prefixes: list[str], target: list[str]) -> None:
        flatten = code.fn(_flattener(frozenset(skip), prefixes), "flatten")
        code.line(f"{flatten}(src, '', {code.container(target)})")


def _json_getter(names: list[str]) -> Getter:
    getters = [_json_path(name) for name in names]
    if len(getters) == 1:
        return getters[0]

    def first_present(obj: dict[str, Any]) -> Any:
        for get in getters:
            value = get(obj)
            if value is not None and value != "":
                return value
        return None

    return first_present


def _json_path(name: str) -> Getter:
    """A dotted path into nested objects and lists (by index, or `*` for every item); a key
    that itself contains dots, as flattened exports write them, is found too."""
    if name.startswith("*.") or ".*." in name or name.endswith(".*"):
        return _json_wildcard(name)
    parts = [(p, int(p) if p.isdigit() else None) for p in name.split(".")]

    def nested(obj: dict[str, Any]) -> Any:
        value: Any = obj
        for key, index in parts:
            if type(value) is dict:
                value = value.get(key)
            elif type(value) is list and index is not None and index < len(value):
                value = value[index]
            else:
                value = None
            if value is None:
                return obj.get(name)
        return value

    return nested


def _json_wildcard(name: str) -> Getter:
    """`items.*.id`: the list of the `id` of every item (None when there is none)."""
    head, _, tail = f".{name}.".partition(".*.")
    head, tail = head.strip("."), tail.strip(".")
    outer = _json_path(head) if head else None
    inner = _json_path(tail) if tail else None

    def every(obj: Any) -> Any:
        items = outer(obj) if outer is not None else obj
        if type(items) is not list:
            return None
        if inner is None:
            return items or None
        found = [v for v in (inner(i) for i in items if type(i) is dict) if v is not None]
        return found or None

    return every


def _flattener(
    skip: frozenset[str], prefixes: list[str]
) -> Callable[[dict[str, Any], str, dict[str, Any]], None]:
    """Copies the leaves of a JSON object as dotted keys, except the `skip` paths."""
    keys: dict[str, str] = {}

    def flatten(obj: dict[str, Any], prefix: str, found: dict[str, Any]) -> None:
        for key, value in obj.items():
            path = prefix + key
            if path in skip or value is None or value == "":
                continue
            if type(value) is dict:
                flatten(value, path + ".", found)
                continue
            name = keys.get(path)
            if name is None:
                name = _strip(path, prefixes)
                if len(keys) < 4096:
                    keys[path] = name
            found[name] = value if type(value) is not list else _attribute_list(value)

    return flatten


def _strip(name: str, prefixes: list[str]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix) and len(name) > len(prefix):
            return name[len(prefix) :]
    return name


def _attribute_list(items: list[Any]) -> Any:
    """Attributes may be lists of numbers, of strings or of flat objects, not a mix: anything
    else travels as its JSON text rather than failing the record."""
    kinds = {_item_kind(v) for v in items}
    if len(kinds) <= 1 and None not in kinds:
        return items
    return msgspec.json.encode(items).decode()


def _item_kind(value: Any) -> str | None:
    if type(value) is str:
        return "str"
    if type(value) is int or type(value) is float:
        return "number"
    if type(value) is dict and all(type(v) in (str, int, float, bool) for v in value.values()):
        return "object"
    return None
