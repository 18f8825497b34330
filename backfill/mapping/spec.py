"""The [mapping] table of the config file: its schema, and its validation at start-up.

A mapping turns each record of a CSV/TSV file (one row under a header) or of a JSON-lines file
of any shape into one Miso record. The whole table is checked before a single line is read,
and every mistake is reported with the config line it sits on, because a mapping that is only
found wrong after an hour of uploads costs an hour.

    [mapping]
    format = "csv"                # "csv", "tsv" or "jsonl" (required)
    delimiter = ","               # csv/tsv: one character (default "," for csv, tab for tsv)
    quote = '"'                   # csv/tsv: "" for none (default '"' for csv, none for tsv)
    timezone = "UTC"              # of date-times without an offset: an IANA name, "UTC" or
                                  # "+02:00" (default "UTC")

    [mapping.fields]              # Miso field (quoted and dotted when nested) = how to fill it
    user_id = "user_id"           # shorthand for { from = "user_id" }
    anonymous_id = { from = ["anonymousId", "anonymous_id"] }       # the first one present
    timestamp = { from = "event_time", convert = "datetime" }       # date_format, timezone
    product_ids = { from = "product_id", convert = ["string", "list"] }
    revenue = { from = "price", convert = "number", types = ["checkout"] }  # only on these
    quantities = { from = "qty", convert = "number", default = 1 }  # when qty is absent
    "context.locale" = { const = "en-US" }
    "context.custom_context.category" = { from = "cat", convert = "split", separator = "." }

    [mapping.fields.type]         # a field may also be a table of its own
    from = "event_type"
    values = { view = "product_detail_page_view", cart = "add_to_cart", purchase = "checkout" }
    unmapped = "custom"           # a value not in `values`: "dead_letter" (default), "drop",
                                  # "custom" (type "custom", custom_action_name = value), "keep"

    [[mapping.drop]]              # records to leave out on purpose (counted as filtered)
    field = "event_type"          # a source field, and one condition: equals = v,
    equals = "remove_from_cart"   # in = [...], not_in = [...] or missing = true

    [mapping.leftovers]           # copy = true (default): source fields no `from` reads go to
    ignore = ["user_session"]     # context.custom_context (custom_attributes for products and
    strip_prefix = "properties."  # users), except these; under their dotted path, without
                                  # this prefix ("properties.colour" -> "colour")

A source field is a CSV column name (the header row's), or a dotted path into a JSON object:
`properties.price`, `items.0.id`, `items.*.id` (a list of every item's id). A value that is
missing, null or the empty string is absent: its target is left out, or set to `default`
(sent as written). `values` is looked up with the value as text, before `convert`; the
conversions (CONVERSIONS below) run in order, and those on single values apply to each item
of a list. A `const` is sent as written (a TOML date-time becomes ISO 8601 text in UTC).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from backfill.mapping.miso_fields import target_problem, tree
from backfill.mapping.where import Where
from backfill.schema import INTERACTION_TYPES, KINDS, Kind

# name -> what it does, for the docs and for the "expected one of" of a bad name
CONVERSIONS: Final[Mapping[str, str]] = {
    "string": "a number or boolean as text (ids that a JSON export wrote as numbers)",
    "number": 'text as a number: "12.50" -> 12.5',
    "integer": 'text as a whole number: "3" -> 3',
    "boolean": "true/false, 1/0, yes/no, t/f, y/n as a boolean",
    "lower": "text in lower case",
    "upper": "text in upper case",
    "list": "a single value as a one-element list (a list stays as it is)",
    "split": 'text split on `separator` (default ",") into a list, items trimmed',
    "datetime": "a date-time text (ISO 8601, 2019-10-01 00:00:00 UTC, or `date_format`)",
    "epoch_s": "seconds since 1970-01-01 UTC as an ISO 8601 date-time",
    "epoch_ms": "milliseconds since 1970-01-01 UTC as an ISO 8601 date-time",
    "epoch_us": "microseconds since 1970-01-01 UTC as an ISO 8601 date-time",
}
DATE_CONVERSIONS: Final = frozenset({"datetime", "epoch_s", "epoch_ms", "epoch_us"})
UNMAPPED_RULES: Final = ("dead_letter", "drop", "custom", "keep")
FORMATS: Final = ("csv", "tsv", "jsonl")

Scalar = str | int | float | bool


class FieldSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How one Miso field is filled: from a source field (or a constant), then converted."""

    from_: str | list[str] | None = msgspec.field(default=None, name="from")
    const: Any = None
    default: Any = None  # the value when the source field is absent
    values: dict[str, Scalar] | None = None  # enumeration map, looked up with the text
    unmapped: str = "dead_letter"  # what a value missing from `values` does
    convert: str | list[str] = []
    date_format: str | list[str] | None = None  # strptime formats for "datetime"
    timezone: str | None = None  # overrides [mapping] timezone for this field
    separator: str = ","  # for "split"
    types: list[str] | None = None  # interactions: set the field only on these types

    @property
    def sources(self) -> list[str]:
        if self.from_ is None:
            return []
        return [self.from_] if isinstance(self.from_, str) else list(self.from_)

    @property
    def steps(self) -> list[str]:
        return [self.convert] if isinstance(self.convert, str) else list(self.convert)


class DropRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Leave out records whose source `field` meets one condition."""

    field: str
    equals: Scalar | None = None
    in_: list[Scalar] | None = msgspec.field(default=None, name="in")
    not_in: list[Scalar] | None = None
    missing: bool | None = None


class Leftovers(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Copy the source fields no `from` reads into the record's free-form attributes."""

    copy: bool = True
    ignore: list[str] = []  # source fields (a dotted prefix covers a whole object)
    strip_prefix: str | list[str] = []

    @property
    def prefixes(self) -> list[str]:
        return [self.strip_prefix] if isinstance(self.strip_prefix, str) else self.strip_prefix


class MappingSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The [mapping] table, decoded; `fields` keeps the table's order."""

    format: str
    delimiter: str | None = None
    quote: str | None = None
    timezone: str = "UTC"
    fields: dict[str, FieldSpec] = {}
    drop: list[DropRule] = []
    leftovers: Leftovers | None = None

    @property
    def is_csv(self) -> bool:
        return self.format in ("csv", "tsv")

    @property
    def csv_delimiter(self) -> str:
        return self.delimiter or ("\t" if self.format == "tsv" else ",")

    @property
    def csv_quote(self) -> str:
        """ "" when the file has no quoting at all."""
        if self.quote is not None:
            return self.quote
        return "" if self.format == "tsv" else '"'


def _plain(exc: msgspec.ValidationError) -> tuple[list[str | int], str]:
    """msgspec says "Expected `str`, got `int` - at `$.drop[1].field`": (path, message)."""
    message, _, where = str(exc).partition(" - at `$")
    path: list[str | int] = []
    for name, index in re.findall(r"\.([^.\[`]+)|\[(\d+)\]", where.rstrip("`")):
        path.append(int(index) if index else name)
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        path.append(unknown.group(1))
        message = "unknown key"
    return path, message.replace("`", "")


def load_spec(mapping: Mapping[str, Any], kind: Kind, config_file: str | None) -> MappingSpec:
    """The decoded and checked [mapping] table; UsageError naming the line otherwise."""
    where = Where(config_file)
    raw = dict(mapping)
    fields_raw = raw.pop("fields", None)
    try:
        spec = msgspec.convert(raw, MappingSpec)
    except msgspec.ValidationError as exc:
        path, message = _plain(exc)
        raise where.error(["mapping", *path], _hint(path, message)) from None
    if not isinstance(fields_raw, dict) or not fields_raw:
        raise where.error(["mapping", "fields"], "a table of Miso fields is required")
    spec.fields = {
        target: _field(where, target, value, kind) for target, value in fields_raw.items()
    }
    _check_top(where, spec)
    _check_targets(where, spec, kind)
    for i, rule in enumerate(spec.drop):
        _check_drop(where, i, rule)
    return spec


def _hint(path: Sequence[str | int], message: str) -> str:
    if path and path[-1] == "format" and len(path) == 1:
        return f"{message} (expected one of {', '.join(FORMATS)})"
    return message


def _field(where: Where, target: str, value: Any, kind: Kind) -> FieldSpec:
    here: list[str | int] = ["mapping", "fields", target]
    if isinstance(value, str):
        value = {"from": value}
    if not isinstance(value, dict):
        raise where.error(
            here,
            f'expected a source field name or a table such as {{ from = "...", convert = ... }}'
            f", got {value!r} (for a constant: {{ const = {value!r} }})",
        )
    if not ({"from", "const"} & value.keys()):
        nested = all(isinstance(v, dict | str) for v in value.values())
        if nested and target in tree(kind):
            raise where.error(
                here,
                f'give nested fields as quoted dotted keys, e.g. "{target}.{next(iter(value))}" '
                '= { from = "..." }',
            )
    try:
        spec = msgspec.convert(value, FieldSpec)
    except msgspec.ValidationError as exc:
        path, message = _plain(exc)
        raise where.error([*here, *path], message) from None
    _check_field(where, here, spec, kind)
    return spec


def _check_field(where: Where, here: list[str | int], f: FieldSpec, kind: Kind) -> None:
    target = str(here[-1])
    if (f.from_ is None) == (f.const is None):
        raise where.error(here, "give exactly one of `from` (a source field) or `const`")
    if f.from_ is not None and (not f.sources or not all(f.sources)):
        raise where.error([*here, "from"], "name at least one source field")
    for name in f.steps:
        if name not in CONVERSIONS:
            close = difflib.get_close_matches(name, CONVERSIONS, 1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            raise where.error(
                [*here, "convert"],
                f'unknown conversion "{name}" ({hint}expected one of {", ".join(CONVERSIONS)})',
            )
    if f.unmapped not in UNMAPPED_RULES:
        raise where.error(
            [*here, "unmapped"],
            f'unknown rule "{f.unmapped}" (expected one of {", ".join(UNMAPPED_RULES)})',
        )
    if f.unmapped != "dead_letter" and f.values is None:
        raise where.error([*here, "unmapped"], "only means something with a `values` map")
    if f.unmapped == "custom" and (kind != "interactions" or target != "type"):
        raise where.error(
            [*here, "unmapped"],
            '"custom" sends an unmapped value as {"type": "custom", "custom_action_name": '
            "value}: it only applies to the `type` of interactions",
        )
    if f.values is not None and target == "type" and kind == "interactions":
        for source, miso in f.values.items():
            if miso not in INTERACTION_TYPES:
                raise where.error([*here, "values", source], _not_a_type(miso))
    if f.const is not None and (f.values is not None or f.convert):
        raise where.error(here, "a `const` is sent as it is: drop `values` and `convert`")
    if f.date_format is not None and "datetime" not in f.steps:
        raise where.error([*here, "date_format"], 'only used by convert = "datetime"')
    if f.timezone is not None:
        if not DATE_CONVERSIONS & set(f.steps):
            raise where.error([*here, "timezone"], "only used by a date-time conversion")
        zone(f.timezone, lambda m: where.error([*here, "timezone"], m))
    if "split" in f.steps and not f.separator:
        raise where.error([*here, "separator"], "must not be empty")
    if f.types is not None:
        if kind != "interactions":
            raise where.error([*here, "types"], "only applies to interactions")
        for name in f.types:
            if name not in INTERACTION_TYPES:
                raise where.error([*here, "types"], _not_a_type(name))
    if target == "type" and f.types is not None:
        raise where.error([*here, "types"], "cannot restrict `type` itself")
    if f.const is not None or f.default is not None:
        value = f.const if f.const is not None else f.default
        if isinstance(value, datetime | date | time):
            f_value = _toml_datetime(value)
            if f.const is not None:
                f.const = f_value
            else:
                f.default = f_value


def _not_a_type(name: object) -> str:
    close = difflib.get_close_matches(str(name), INTERACTION_TYPES, 1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f'"{name}" is not a Miso interaction type{hint}; use "custom" for business events'


def _toml_datetime(value: datetime | date | time) -> str:
    """TOML has date-time values; Miso wants ISO text, in UTC when the zone is known."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        text = value.astimezone(UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")
    return value.isoformat()


def _check_top(where: Where, spec: MappingSpec) -> None:
    if spec.format not in FORMATS:
        raise where.error(
            ["mapping", "format"], f'"{spec.format}" (expected one of {", ".join(FORMATS)})'
        )
    if not spec.is_csv:
        for key in ("delimiter", "quote"):
            if getattr(spec, key) is not None:
                raise where.error(["mapping", key], 'only applies to format = "csv" or "tsv"')
    if spec.delimiter is not None and len(spec.delimiter) != 1:
        raise where.error(["mapping", "delimiter"], "must be exactly one character")
    if spec.quote is not None and len(spec.quote) > 1:
        raise where.error(["mapping", "quote"], 'must be one character, or "" for no quoting')
    if spec.is_csv and spec.csv_quote and spec.csv_quote == spec.csv_delimiter:
        raise where.error(["mapping", "quote"], "must differ from the delimiter")
    if spec.is_csv and spec.csv_delimiter in "\r\n":
        raise where.error(["mapping", "delimiter"], "cannot be a line break")
    zone(spec.timezone, lambda m: where.error(["mapping", "timezone"], m))


def zone(name: str, fail: Any) -> tzinfo:
    """An IANA zone ("Europe/Paris"), "UTC", or a fixed offset ("+02:00", "-0530")."""
    if name.upper() in ("UTC", "Z", "GMT"):
        return UTC
    offset = re.fullmatch(r"([+-])(\d\d):?(\d\d)", name)
    if offset:
        sign = -1 if offset.group(1) == "-" else 1
        minutes = int(offset.group(2)) * 60 + int(offset.group(3))
        if minutes < 24 * 60:
            return timezone(sign * timedelta(minutes=minutes))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise fail(
            f'unknown time zone "{name}" (an IANA name such as "Europe/Paris", "UTC", '
            'or an offset such as "+02:00")'
        ) from None


def _check_drop(where: Where, i: int, rule: DropRule) -> None:
    here: list[str | int] = ["mapping", "drop", i]
    given = [
        k
        for k, v in (
            ("equals", rule.equals),
            ("in", rule.in_),
            ("not_in", rule.not_in),
            ("missing", rule.missing),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise where.error(here, "give exactly one condition: equals, in, not_in or missing = true")
    if rule.missing is False:
        raise where.error([*here, "missing"], "only `missing = true` is a condition")
    if not rule.field:
        raise where.error([*here, "field"], "name a source field")


def _check_targets(where: Where, spec: MappingSpec, kind: Kind) -> None:
    for target in spec.fields:
        problem = target_problem(target, kind)
        if problem is not None:
            raise where.error(["mapping", "fields", target], problem)
    _check_overlaps(where, spec, kind)
    required = KINDS[kind].required
    if required not in spec.fields:
        raise where.error(
            ["mapping", "fields"], f"every Miso {kind[:-1]} needs `{required}`: map it"
        )


def _check_overlaps(where: Where, spec: MappingSpec, kind: Kind) -> None:
    """A target inside another one ("context" and "context.locale") would be overwritten."""
    targets = list(spec.fields)
    if spec.leftovers is not None and spec.leftovers.copy:
        targets.append(KINDS[kind].extra + ".*")
    for outer in spec.fields:
        for inner in targets:
            if inner.startswith(outer + "."):
                what = "the leftovers" if inner.endswith(".*") else f'"{inner}"'
                raise where.error(
                    ["mapping", "fields", outer],
                    f"{what} go inside it: map the fields of {outer} one by one instead",
                )
