"""A checked MappingSpec compiled into one function per file: source record -> Miso JSON bytes.

This runs once per record, so every decision that does not depend on the record is taken
here, once: which CSV column (an index, known when the header is read) or JSON path each field
reads, which conversions run, where the value goes. The result is the Python source of one
straight-line function, compiled with `exec` (as dataclasses and attrs do): no per-field
closure calls, no loops over the spec, nested objects created inline, date-time caches asked
inline. That is what keeps a mapped CSV load within reach of a native one
(benchmarks/bench_mapping.py).

The generated function reads, in order: the width check (CSV), the drop rules, `type` (so
that `types = [...]` restrictions can look at it), the leftovers (so that explicit fields win
over them), then the other fields in the config's order. A record is left out on purpose by
raising Dropped(why), and refused with RecordRefused(reason); both are rare, so exceptions
cost nothing on the common path. `CompiledMapping.source` keeps the generated text of the
last file bound, for debugging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import msgspec

from backfill.conversions import Conversion, ConversionError, conversion, shown, text_of
from backfill.errors import UsageError
from backfill.mapspec import EXTRA_TARGET, DropRule, FieldSpec, MappingSpec, zone
from backfill.schema import Kind

RecordMapper = Callable[[Any], bytes]
Getter = Callable[[Any], Any]

_ABSENT: Final = object()


class Dropped(Exception):
    """The record is left out on purpose (a drop rule, or an unmapped value with "drop")."""


class RecordRefused(Exception):
    """The record cannot be mapped; str() is the reason for its dead-letter entry."""


# What a rule may still raise on a value nobody foresaw (a recursion on a deeply nested
# object, a number beyond a limit): the record is refused with the reason, never the run.
RULE_FAILURES: Final = (
    ArithmeticError,
    LookupError,
    RecursionError,
    TypeError,
    ValueError,
    msgspec.MsgspecError,
)


def rule_failure(exc: BaseException) -> str:
    """The dead-letter reason of one of RULE_FAILURES."""
    if isinstance(exc, RecursionError):
        return "cannot map the record: nested too deeply"
    detail = str(exc) or "no detail"
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    return f"cannot map the record: {type(exc).__name__}: {detail}"


class CompiledMapping:
    """The spec with its conversions built; `for_csv`/`for_json` bind it to a source shape."""

    def __init__(self, spec: MappingSpec, kind: Kind) -> None:
        self.spec = spec
        self.kind = kind
        default_zone = zone(spec.timezone, UsageError)
        self.conversions: dict[str, list[Conversion]] = {}
        for target, f in spec.fields.items():
            formats = [f.date_format] if isinstance(f.date_format, str) else f.date_format or []
            field_zone = zone(f.timezone, UsageError) if f.timezone else default_zone
            self.conversions[target] = [
                conversion(name, zone=field_zone, formats=formats, separator=f.separator)
                for name in f.steps
            ]
        self.order = sorted(spec.fields, key=lambda t: t != "type")
        self.sources = {s for f in spec.fields.values() for s in f.sources}
        self.source = ""

    def for_csv(self, columns: list[str], path: Path) -> RecordMapper:
        """The mapper of a CSV file whose header is `columns`; UsageError if one is missing."""
        return self._generate(_CsvShape(columns, path))

    def for_json(self) -> RecordMapper:
        return self._generate(_JsonShape())

    def _generate(self, shape: _Shape) -> RecordMapper:
        code = _Code()
        code.line("def map_record(src):")
        with code.block():
            shape.prologue(code)
            for number, rule in enumerate(self.spec.drop):
                self._drop(code, shape, number, rule)
            code.line("out = {}")
            code.mark()
            first = 1 if self.order[0] == "type" else 0
            for target in self.order[:first]:
                self._field(code, shape, target, self.spec.fields[target])
            self._leftovers(code, shape)
            for target in self.order[first:]:
                self._field(code, shape, target, self.spec.fields[target])
            code.assemble()
            code.line(f"return {code.name(msgspec.json.Encoder().encode, 'encode')}(out)")
        self.source = code.text()
        mapper: RecordMapper = code.compile("map_record")
        return mapper

    # -- pieces of the function --------------------------------------------------------------

    def _drop(self, code: _Code, shape: _Shape, number: int, rule: DropRule) -> None:
        where = f"mapping.drop[{number}]: {rule.field}"
        code.line(f"v = {shape.read(code, [rule.field], f'mapping.drop[{number}]')}")
        if rule.missing:
            why = f"{where} is missing"
            condition = f"not ({shape.present('v')})"
        else:
            values = [rule.equals] if rule.equals is not None else rule.in_ or rule.not_in or []
            wanted = code.name(frozenset(text_of(v) for v in values), "wanted")
            text = "v" if shape.always_text else f"(v if type(v) is str else {code.fn(text_of)}(v))"
            hit = f"(v is not None and {text} in {wanted})"
            negate = rule.not_in is not None
            condition = f"not {hit}" if negate else hit
            if rule.equals is not None:
                why = f"{where} = {shown(rule.equals)}"
            else:
                why = f"{where} {'not in' if negate else 'in'} {shown(values)}"
        code.line(f"if {condition}:")
        with code.block():
            code.line(f"raise {code.fn(Dropped)}({code.name(why, 'why')})")

    def _field(self, code: _Code, shape: _Shape, target: str, f: FieldSpec) -> None:
        code.line(f"# {target}")
        restricted = f.types is not None
        if restricted:
            code.line(f"if out.get('type') in {code.name(frozenset(f.types or ()), 'types')}:")
            code.indent += 1
        if f.const is not None:
            _assign(code, target, code.name(f.const, "const"))
        else:
            code.line(f"v = {shape.read(code, f.sources, f'mapping.fields.{target}')}")
            code.line(f"if {shape.present('v')}:")
            with code.block():
                self._convert(code, shape, target, f)
            if f.default is not None:
                code.line("else:")
                with code.block():
                    _assign(code, target, code.name(f.default, "default"))
        if restricted:
            code.indent -= 1

    def _convert(self, code: _Code, shape: _Shape, target: str, f: FieldSpec) -> None:
        label = "/".join(f.sources)
        maybe_list = not shape.always_text
        absent = code.name(_ABSENT, "absent")
        if f.values is not None:
            table = code.name(f.values, "values")
            key = "v" if shape.always_text else f"(v if type(v) is str else {code.fn(text_of)}(v))"
            code.line(f"m = {table}.get({key}, {absent})")
            code.line(f"if m is {absent}:")
            with code.block():
                code.line(f"v = {code.fn(_unmapped(target, f, label))}(v, out)")
            code.line("else:")
            with code.block():
                code.line("v = m")
            maybe_list = maybe_list and f.unmapped == "keep"
            if f.unmapped == "custom":
                code.line(f"if v is not {absent}:")
                code.indent += 1
        conversions = self.conversions[target]
        fallible = any(c.fallible for c in conversions)
        if fallible:
            code.line("try:")
            code.indent += 1
        for c in conversions:
            hashable = shape.always_text and not maybe_list
            code.line(f"v = {_apply(code, c, maybe_list, hashable)}")
            maybe_list = maybe_list or c.makes_list
        if fallible:
            code.indent -= 1
            code.line(f"except {code.fn(ConversionError)} as exc:")
            with code.block():
                refused = code.fn(RecordRefused)
                code.line(
                    f"raise {refused}({code.name(label + ': ', 'label')} + str(exc)) from None"
                )
        _assign(code, target, "v")
        if f.values is not None and f.unmapped == "custom":
            code.indent -= 1

    def _leftovers(self, code: _Code, shape: _Shape) -> None:
        extra = self.spec.leftovers
        if extra is None or not extra.copy:
            return
        code.line("# leftovers")
        skip = self.sources | set(extra.ignore)
        shape.leftovers(code, skip, extra.prefixes, EXTRA_TARGET[self.kind].split("."))


def _apply(code: _Code, c: Conversion, maybe_list: bool, hashable: bool) -> str:
    """The expression applying one conversion to `v`.

    `hashable`: v is surely a scalar, so a date-time's cache can be asked inline."""
    if c.name == "list":
        return "v if type(v) is list else [v]" if maybe_list else "[v]"
    fn = code.fn(c.convert, c.name)
    one = f"{fn}(v)"
    if c.cache is not None and hashable:
        one = f"({code.name(c.cache, 'cache')}.get(v) or {fn}(v))"
    if c.each and maybe_list:
        return f"[{fn}(x) for x in v] if type(v) is list else {one}"
    return one


def _assign(code: _Code, target: str, value: str) -> None:
    """`out[a][b][c] = value`, through the local variable that holds object `a.b`."""
    *parents, last = target.split(".")
    code.line(f"{code.container(parents)}[{last!r}] = {value}")


def _unmapped(target: str, f: FieldSpec, label: str) -> Callable[[Any, dict[str, Any]], Any]:
    """What a value missing from `values` becomes, by the field's `unmapped` rule."""
    rule = f.unmapped

    def unmapped(value: Any, out: dict[str, Any]) -> Any:
        if rule == "keep":
            return value
        if rule == "custom":
            out["type"] = "custom"
            out["custom_action_name"] = text_of(value)
            return _ABSENT
        why = f"{label}: {shown(value)} is not in the values of {target} (unmapped = {rule!r})"
        if rule == "drop":
            raise Dropped(why)
        raise RecordRefused(why.replace("'", '"'))

    return unmapped


# ---------------------------------------------------------------------------------------------
# Source shapes: how a field is read, and what "absent" means.
# ---------------------------------------------------------------------------------------------


class _Shape:
    always_text = False

    def prologue(self, code: _Code) -> None:
        """Code run first on each record."""

    def read(self, code: _Code, names: list[str], what: str) -> str:
        raise NotImplementedError

    def present(self, var: str) -> str:
        return f"{var} is not None and {var} != ''"

    def leftovers(
        self, code: _Code, skip: set[str], prefixes: list[str], target: list[str]
    ) -> None:
        raise NotImplementedError


class _CsvShape(_Shape):
    """A row of text cells, padded to the header's width; "" is absent."""

    always_text = True

    def __init__(self, columns: list[str], path: Path) -> None:
        self.columns = columns
        self.path = path
        self.index: dict[str, int] = {}
        for i, name in enumerate(columns):
            self.index.setdefault(name, i)

    def prologue(self, code: _Code) -> None:
        code.line(f"if len(src) != {len(self.columns)}:")
        with code.block():
            code.line(f"{code.fn(_fit(len(self.columns)), 'fit')}(src)")

    def read(self, code: _Code, names: list[str], what: str) -> str:
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

    def leftovers(
        self, code: _Code, skip: set[str], prefixes: list[str], target: list[str]
    ) -> None:
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


class _JsonShape(_Shape):
    """A decoded JSON object; null and "" are absent."""

    def read(self, code: _Code, names: list[str], what: str) -> str:
        if len(names) == 1 and "." not in names[0] and "*" not in names[0]:
            return f"src.get({names[0]!r})"
        return f"{code.fn(_json_getter(names), 'get')}(src)"

    def leftovers(
        self, code: _Code, skip: set[str], prefixes: list[str], target: list[str]
    ) -> None:
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


# ---------------------------------------------------------------------------------------------
# Writing the function.
# ---------------------------------------------------------------------------------------------


class _Code:
    """Python source being written, and the objects it refers to by name.

    Nested objects of the record (`context`, `context.custom_context`) live in local
    variables, created empty at the top (`mark()`) and attached to their parents at the end
    when they are not empty (`assemble()`): no lookups on the way, no empty objects sent."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.indent = 0
        self.namespace: dict[str, Any] = {}
        self._names: dict[int, str] = {}
        self._containers: dict[tuple[str, ...], str] = {}
        self._mark = 0

    def mark(self) -> None:
        """Where the nested objects are created."""
        self._mark = len(self.lines)

    def container(self, parts: list[str]) -> str:
        """The local variable holding the nested object at `parts` ("out" for the record)."""
        if not parts:
            return "out"
        key = tuple(parts)
        if key not in self._containers:
            self.container(parts[:-1])
            self._containers[key] = f"o{len(self._containers)}"
        return self._containers[key]

    def assemble(self) -> None:
        indent = "    " * self.indent
        made = [f"{indent}{var} = {{}}" for var in self._containers.values()]
        self.lines[self._mark : self._mark] = made
        for key in sorted(self._containers, key=len, reverse=True):
            var = self._containers[key]
            self.line(f"if {var}:")
            with self.block():
                self.line(f"{self.container(list(key[:-1]))}[{key[-1]!r}] = {var}")

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    @contextmanager
    def block(self) -> Iterator[None]:
        self.indent += 1
        try:
            yield
        finally:
            self.indent -= 1

    def name(self, obj: Any, hint: str) -> str:
        """A name for `obj` in the function's globals (one per object)."""
        known = self._names.get(id(obj))
        if known is not None:
            return known
        name = f"{hint}_{len(self._names)}"
        self.namespace[name] = obj
        self._names[id(obj)] = name
        return name

    def fn(self, obj: Any, hint: str | None = None) -> str:
        return self.name(obj, hint or getattr(obj, "__name__", "fn").strip("_"))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def compile(self, function: str) -> Any:
        exec(compile(self.text(), "<backfill mapping>", "exec"), self.namespace)
        return self.namespace[function]
