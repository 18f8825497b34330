"""A checked MappingSpec compiled into one function per file: source record -> Miso JSON bytes.

This runs once per record, so every decision that does not depend on the record is taken
here, once: which CSV column (an index, known when the header is read) or JSON path each field
reads, which conversions run, where the value goes. The result is the Python source of one
straight-line function, compiled with `exec` (as dataclasses and attrs do): no per-field
closure calls, no loops over the spec, nested objects created inline, date-time caches asked
inline. That is what keeps a mapped CSV load within reach of a native one
(benchmarks/mapped.py).

The generated function reads, in order: the width check (CSV), the drop rules, `type` (so
that `types = [...]` restrictions can look at it), the leftovers (so that explicit fields win
over them), then the other fields in the config's order. A record is left out on purpose by
raising Dropped(why), and refused with RecordRefused(reason); both are rare, so exceptions
cost nothing on the common path. `CompiledMapping.source` keeps the generated text of the
last file bound, for debugging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from backfill.errors import UsageError
from backfill.mapping.codegen import Code
from backfill.mapping.conversions import Conversion, ConversionError, conversion, shown, text_of
from backfill.mapping.refusals import Dropped, RecordRefused
from backfill.mapping.shapes import CsvShape, JsonShape, Shape
from backfill.mapping.spec import DropRule, FieldSpec, MappingSpec, zone
from backfill.schema import KINDS, Kind

RecordMapper = Callable[[Any], bytes]

_ABSENT: Final = object()


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

    def for_csv(self, columns: list[str], name: str) -> RecordMapper:
        """The mapper of a CSV file whose header is `columns`; UsageError if one is missing."""
        return self._generate(CsvShape(columns, name))

    def for_json(self) -> RecordMapper:
        return self._generate(JsonShape())

    def _generate(self, shape: Shape) -> RecordMapper:
        code = Code()
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

    def _drop(self, code: Code, shape: Shape, number: int, rule: DropRule) -> None:
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

    def _field(self, code: Code, shape: Shape, target: str, f: FieldSpec) -> None:
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

    def _convert(self, code: Code, shape: Shape, target: str, f: FieldSpec) -> None:
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

    def _leftovers(self, code: Code, shape: Shape) -> None:
        extra = self.spec.leftovers
        if extra is None or not extra.copy:
            return
        code.line("# leftovers")
        skip = self.sources | set(extra.ignore)
        shape.leftovers(code, skip, extra.prefixes, KINDS[self.kind].extra.split("."))


def _apply(code: Code, c: Conversion, maybe_list: bool, hashable: bool) -> str:
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


def _assign(code: Code, target: str, value: str) -> None:
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
