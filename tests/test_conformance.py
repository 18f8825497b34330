"""Conformance: our msgspec schema and the vendor's OpenAPI file agree on every record.

Records are generated from the OpenAPI schemas themselves (valid ones and near misses: wrong
types, unknown fields, bad enums, too-long strings, bad formats) and judged twice: by
`RecordValidator` with the backfill rules relaxed (the contract alone) and by `jsonschema`'s
Draft 2020-12 validator with format checking. Both verdicts must match.

Where the reference implementation is looser than the formats it claims to check, the test
tightens it (see `_reference_formats`); where our schema is deliberately stricter than the file
(product_id and user_id rules from miso-api.md), the expected verdict adds that rule.
"""

from __future__ import annotations

import json
import re
import string
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from rfc3339_validator import validate_rfc3339  # type: ignore[import-untyped]

from backfill.schema import INTERACTION_TYPES, Kind, RecordValidator, Rules, miso_error_lines

# A copy of the vendor's file (shared/miso-data-api.openapi.json), kept with the tests so that
# they run from any clone; test_the_copy_is_current compares it with the original when present.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "miso-data-api.openapi.json"
SHARED_SPEC = Path(__file__).resolve().parents[2] / "shared" / "miso-data-api.openapi.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text())
COMPONENTS: dict[str, Any] = SPEC["components"]["schemas"]
INTERACTION_ITEM: dict[str, Any] = COMPONENTS["InteractionBulkIn"]["properties"]["data"]["items"]

CONFORMANCE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONTRACT_ONLY = Rules(require_timestamp=False, require_identity=False)


# ---------------------------------------------------------------------------------------------
# The reference: jsonschema over the vendor file.
# ---------------------------------------------------------------------------------------------


def _date_time(value: object) -> bool:
    """rfc3339-validator anchors with `$`, which also matches before a final newline, and
    refuses leap seconds, which RFC 3339 allows at 23:59:60 UTC (as JSON Schema's test suite
    does: 1998-12-31T15:59:60.123-08:00 is valid, 1998-12-31T23:58:60Z is not)."""
    if not isinstance(value, str):
        return True
    text = value.upper()
    if text.endswith("\n"):
        return False
    leap = re.fullmatch(r"(.{11}(..):(..):)60(\.[0-9]+)?(Z|([+-])(..):(..))", text)
    if leap is None:
        return bool(validate_rfc3339(text))
    if not validate_rfc3339(f"{leap[1]}59{leap[4] or ''}{leap[5]}"):
        return False
    sign = -1 if leap[6] == "-" else 1
    offset = sign * (int(leap[7]) * 60 + int(leap[8])) if leap[6] else 0
    return (int(leap[2]) * 60 + int(leap[3]) - offset) % 1440 == 23 * 60 + 59


def _uuid(value: object) -> bool:
    """jsonschema only looks at four hyphen positions (so "12345678-1234-1234-1234-1234-5678abcd"
    passes); RFC 4122's form is 8-4-4-4-12 hex digits."""
    return not isinstance(value, str) or (
        [len(part) for part in value.split("-")] == [8, 4, 4, 4, 12]
        and uuid.UUID(value) is not None
    )


def _uri(value: object) -> bool:
    """jsonschema checks "uri" only when rfc3987 is installed (it is not a dependency here);
    RFC 3986's absolute URI: a scheme, ":", and no spaces or control characters."""
    if not isinstance(value, str):
        return True
    scheme, colon, rest = value.partition(":")
    return (
        bool(colon)
        and scheme[:1] in set(string.ascii_letters)
        and all(c in string.ascii_letters + string.digits + "+-." for c in scheme)
        and not any(ord(c) <= 32 or ord(c) == 127 for c in rest)
    )


def _reference_formats() -> FormatChecker:
    checker = FormatChecker()
    checker.checks("date-time")(_date_time)
    checker.checks("uuid", raises=ValueError)(_uuid)
    checker.checks("uri")(_uri)
    return checker


def _inline(schema: Any) -> Any:
    """The schema with every `#/components/schemas/...` reference replaced by its target.

    Same meaning (the file has no recursive schemas), and the validator no longer resolves
    references for each of the 29 branches of every record, which dominated the test's time.
    """
    if isinstance(schema, list):
        return [_inline(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline(COMPONENTS[schema["$ref"].removeprefix("#/components/schemas/")])
    return {key: _inline(value) for key, value in schema.items()}


def _reference(root: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(_inline(root), format_checker=FORMATS)


FORMATS = _reference_formats()
REFERENCE: Mapping[Kind, Draft202012Validator] = {
    "interactions": _reference(INTERACTION_ITEM),
    "products": _reference(COMPONENTS["ProductRecord"]),
    "users": _reference(COMPONENTS["UserRecord"]),
}


# Each branch of the union requires `type` and allows one value of it, so a record can only
# match the branch its `type` names (test_the_union_is_keyed_by_type checks this of the file):
# judging it by that branch alone gives the union's verdict, without 28 failing branches.
BRANCHES: Mapping[str, Draft202012Validator] = {
    _inline(ref)["title"]: _reference(ref) for ref in INTERACTION_ITEM["anyOf"]
}


def _reference_verdict(kind: Kind, record: Any) -> bool:
    tag = record.get("type") if kind == "interactions" and isinstance(record, dict) else None
    if isinstance(tag, str) and tag in BRANCHES:
        return bool(BRANCHES[tag].is_valid(record))
    return bool(REFERENCE[kind].is_valid(record)) and _id_rules(kind, record)


def _id_rules(kind: Kind, record: Any) -> bool:
    """miso-api.md's id rules, which the file does not state (our schema enforces them)."""
    if kind == "interactions" or not isinstance(record, dict):
        return True
    value = record.get("product_id" if kind == "products" else "user_id")
    if not isinstance(value, str) or not value:
        return True  # the file's own rules judge these
    return not value.startswith("_") and (kind == "users" or "," not in value)


# ---------------------------------------------------------------------------------------------
# Records derived from the vendor schemas: mostly valid, with near misses at every node.
# ---------------------------------------------------------------------------------------------

WRONG_TYPES = st.sampled_from([None, True, 0, 1.5, "x", [], {}, ["x"], {"a": 1}])
FOREIGN_FIELDS = sorted(
    {name for cls in INTERACTION_TYPES.values() for name in cls.__struct_fields__}
    | {"Type", "userId", "title", "name", "foo", "product_id"}
)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in schema:
            schema = COMPONENTS[schema["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in schema and len(schema["allOf"]) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


Pair = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]  # (valid, near misses)


def values(schema: dict[str, Any], odds: int = 12) -> st.SearchStrategy[Any]:
    """Values of `schema` where one node in `odds` is a near miss.

    At 1 in 12 whole records come out about half valid; a focused test (one field per
    record) uses 1 in 5.
    """
    schema = _resolve(schema)
    if "anyOf" in schema:
        return st.one_of([values(member, odds) for member in schema["anyOf"]])
    kind = "enum" if "enum" in schema else schema.get("type", "object")
    good, bad = _GENERATORS[kind](schema, odds)
    near = st.one_of(bad, WRONG_TYPES)
    return st.integers(1, odds).flatmap(lambda n: near if n == 1 else good)


def _enum(schema: dict[str, Any], odds: int) -> Pair:
    choices = schema["enum"]
    near = st.sampled_from([c.lower() for c in choices] + [c + " " for c in choices] + [""])
    return st.sampled_from(choices), near


def _object(schema: dict[str, Any], odds: int) -> Pair:
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    fields = st.fixed_dictionaries(
        {k: values(v, odds) for k, v in properties.items() if k in required},
        optional={k: values(v, odds) for k, v in properties.items() if k not in required},
    )
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        good = st.dictionaries(st.text(max_size=4), values(extra, odds), max_size=3)
        return good, st.just({"k": None})
    bad = st.one_of(
        st.tuples(fields, st.sampled_from(FOREIGN_FIELDS), WRONG_TYPES).map(
            lambda t: {**t[0], t[1]: t[2]}
        ),
        fields.map(lambda d: {k: v for k, v in d.items() if k not in required}),
    )
    return fields, bad


def _array(schema: dict[str, Any], odds: int) -> Pair:
    items = values(schema["items"], odds)
    return st.lists(items, max_size=3), st.lists(WRONG_TYPES, min_size=1, max_size=2)


def _number(schema: dict[str, Any], odds: int) -> Pair:
    good = st.one_of(st.integers(-(2**63), 2**63), st.floats(allow_nan=False, allow_infinity=False))
    return good, st.sampled_from(["1", True, False])


def _integer(schema: dict[str, Any], odds: int) -> Pair:
    return st.integers(-(2**63), 2**63), st.sampled_from([1.0, 2.5, "3", True])


def _boolean(schema: dict[str, Any], odds: int) -> Pair:
    return st.booleans(), st.sampled_from([0, 1, "true"])


def _string(schema: dict[str, Any], odds: int) -> Pair:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]()
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    good = st.text(min_size=low, max_size=12)
    near: list[str] = ["a" * (low - 1)] if low else []
    if high is not None:
        # Code points, not bytes or UTF-16 units, count towards maxLength.
        good = st.one_of(good, st.sampled_from(["a" * high, "é" * high, "\U0001f600" * high]))
        near += ["a" * (high + 1), "é" * (high + 1)]
    return good, (st.sampled_from(near) if near else WRONG_TYPES)


_GENERATORS: dict[str, Callable[[dict[str, Any], int], Pair]] = {
    "enum": _enum,
    "object": _object,
    "array": _array,
    "number": _number,
    "integer": _integer,
    "boolean": _boolean,
    "string": _string,
}


# --- formats ---------------------------------------------------------------------------------

# Years stop at 9998: msgspec rounds nanoseconds to microseconds, so 9999-12-31T23:59:59.9999996Z
# rounds past the largest datetime and is refused; that one instant is the only disagreement.
DATES = st.dates(min_value=date(1, 1, 1), max_value=date(9998, 12, 31))
TWO = st.integers(0, 99).map(lambda n: f"{n:02d}")


@st.composite
def date_times(draw: st.DrawFn) -> str:
    """Valid RFC 3339 date-times, in every form the grammar allows."""
    day = draw(DATES).isoformat()
    clock = draw(st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)))
    fraction = draw(st.sampled_from(["", ".5", ".073", ".123456", ".123456789", ".9999996"]))
    sign, offset = (
        draw(st.sampled_from("+-")),
        draw(st.tuples(st.integers(0, 23), st.integers(0, 59))),
    )
    zone = draw(st.sampled_from(["Z", "z", f"{sign}{offset[0]:02d}:{offset[1]:02d}"]))
    separator = draw(st.sampled_from("Tt"))
    return f"{day}{separator}{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d}{fraction}{zone}"


NEAR_DATE_TIMES = st.one_of(
    date_times().map(lambda s: s.replace("T", " ").replace("t", " ")),
    date_times().map(lambda s: s[:-3] + s[-2:] if s[-3] == ":" else s[:-1]),  # +0100 or naive
    date_times().map(lambda s: s[:16] + s[19:]),  # no seconds
    date_times().map(lambda s: s + "\n"),
    date_times().map(lambda s: s[:17] + "60" + s[19:]),  # second 60: a leap second or not
    DATES.map(lambda d: f"{d.isoformat()}T23:59:60Z"),
    st.tuples(st.integers(0, 9999), TWO, TWO, TWO, TWO, TWO).map(
        lambda t: f"{t[0]:04d}-{t[1]}-{t[2]}T{t[3]}:{t[4]}:{t[5]}Z"  # any day, hour, second
    ),
    st.sampled_from(
        [
            "yesterday",
            "",
            "2026-08-14",
            "2026-08-14T12:34:56,5Z",
            "2026-08-14T12:34:56+01",
            "20260814T123456Z",
            "2026-08-14T12:34:56.Z",
            "\uff12\uff10\uff12\uff16-08-14T12:34:56Z",  # fullwidth digits,
        ]
    ),
)


def _date_time_format() -> Pair:
    return date_times(), NEAR_DATE_TIMES


def _uuid_format() -> Pair:
    text = st.uuids().map(str)
    near = st.one_of(
        text.map(str.upper),  # valid too
        text.map(lambda s: s.replace("-", "")),
        text.map(lambda s: "{" + s + "}"),
        text.map(lambda s: s[:-1]),
        text.map(lambda s: s[:28] + "-" + s[28:-1]),
        text.map(lambda s: "urn:uuid:" + s),
    )
    return text, near


def _ipv4_format() -> Pair:
    good = st.ip_addresses(v=4).map(str)
    near = st.one_of(
        st.sampled_from(
            [
                "256.1.1.1",
                "01.2.3.4",
                "1.2.3",
                "1.2.3.4.5",
                " 1.2.3.4",
                "\u0661.\u0662.\u0663.\u0664",
            ]
        ),
        good.map(lambda s: s + "\n"),
        good.map(lambda s: s + ".0"),
    )
    return good, near


def _uri_format() -> Pair:
    good = st.sampled_from(["https://shop.example/p/1", "http://x", "urn:isbn:123", "a+b-c.d:"])
    near = st.sampled_from(["/p/1", "shop.example/p", "https://a b", "1http://x", "", ":x"])
    return good, near


def _date_format() -> Pair:
    near = st.sampled_from(["2020-02-30", "2021-02-29", "2020-1-01", "20200101", "0000-01-01"])
    return DATES.map(date.isoformat), near


_FORMATS: dict[str, Callable[[], Pair]] = {
    "date-time": _date_time_format,
    "uuid": _uuid_format,
    "ipv4": _ipv4_format,
    "uri": _uri_format,
    "date": _date_format,
}


# ---------------------------------------------------------------------------------------------
# The verdicts.
# ---------------------------------------------------------------------------------------------


def _agree(kind: Kind, record: Any, seen: Counter[bool]) -> None:
    raw = msgspec.json.encode(record)
    expected = _reference_verdict(kind, record)
    reason = RecordValidator(kind, CONTRACT_ONLY).check(raw)
    assert (reason is None) == expected, f"ours: {reason!r}; reference: {expected}; {raw!r}"
    lines = miso_error_lines(kind, [raw])
    assert len(lines) == (0 if expected else 1), lines
    seen[expected] += 1


def _schemas_by_shape() -> dict[str, list[dict[str, Any]]]:
    """The 29 interaction schemas grouped by their property sets (one test per group)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for ref in INTERACTION_ITEM["anyOf"]:
        schema = _resolve(ref)
        key = ",".join(sorted(set(schema["properties"]) | set(schema.get("required", []))))
        groups.setdefault(key, []).append(schema)
    return groups


SHAPES = _schemas_by_shape()


def _shape_id(key: str) -> str:
    return "+".join(s["title"] for s in SHAPES[key])[:40]


@pytest.mark.parametrize("shape", sorted(SHAPES), ids=_shape_id)
def test_interactions_agree_with_the_openapi_file(shape: str) -> None:
    seen: Counter[bool] = Counter()
    records = st.one_of([values(schema) for schema in SHAPES[shape]])

    @CONFORMANCE
    @given(record=records)
    def agree(record: Any) -> None:
        _agree("interactions", record, seen)

    agree()
    assert seen[True] >= 10 and seen[False] >= 10, seen


@pytest.mark.parametrize("kind", ["products", "users"])
def test_products_and_users_agree_with_the_openapi_file(kind: Kind) -> None:
    seen: Counter[bool] = Counter()
    schema = COMPONENTS["ProductRecord" if kind == "products" else "UserRecord"]

    @settings(CONFORMANCE, max_examples=100)
    @given(record=values(schema, odds=30 if kind == "products" else 12))
    def agree(record: Any) -> None:
        _agree(kind, record, seen)

    agree()
    assert seen[True] >= 15 and seen[False] >= 15, seen


def _one_field_records(kind: Kind) -> st.SearchStrategy[dict[str, Any]]:
    """A minimal valid record plus one field of the file, drawn with many near misses.

    For interactions, half the records hold one field of `context` instead, inside a context.
    """
    if kind == "interactions":
        schemas = [_resolve(ref) for ref in INTERACTION_ITEM["anyOf"]]
        bases = [
            (
                {"type": s["title"]}
                | ({"custom_action_name": "x"} if s["title"] == "custom" else {}),
                s,
            )
            for s in schemas
        ]
        context = _resolve(COMPONENTS["WebBasedContext"])
        nested = [
            values(sub, odds=5).map(_put({}, field)).map(_put({"type": "like"}, "context"))
            for field, sub in context["properties"].items()
        ]
    else:
        name = "ProductRecord" if kind == "products" else "UserRecord"
        bases = [({"product_id" if kind == "products" else "user_id": "id-1"}, COMPONENTS[name])]
        nested = []
    pairs = [
        (base, field, sub) for base, schema in bases for field, sub in schema["properties"].items()
    ]
    top = st.one_of([values(sub, odds=5).map(_put(base, field)) for base, field, sub in pairs])
    if not nested:
        return top
    inner = st.one_of(nested)  # flatmap: one_of would flatten both into one list of branches
    return st.booleans().flatmap(lambda in_context: inner if in_context else top)


def _put(base: dict[str, Any], field: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {**base, field: value}


@pytest.mark.parametrize("kind", ["interactions", "products", "users"])
def test_each_field_agrees_with_the_openapi_file(kind: Kind) -> None:
    seen: Counter[bool] = Counter()

    @settings(CONFORMANCE, max_examples=300)
    @given(record=_one_field_records(kind))
    def agree(record: Any) -> None:
        _agree(kind, record, seen)

    agree()
    assert seen[True] >= 30 and seen[False] >= 30, seen


FREE_FORM: Mapping[Kind, tuple[dict[str, Any], Callable[[Any], dict[str, Any]]]] = {
    "interactions": (
        COMPONENTS["WebBasedContext"]["properties"]["custom_context"],
        lambda v: {"type": "like", "context": {"custom_context": v}},
    ),
    "products": (
        COMPONENTS["ProductRecord"]["properties"]["custom_attributes"],
        _put({"product_id": "p"}, "custom_attributes"),
    ),
    "users": (
        COMPONENTS["UserRecord"]["properties"]["custom_attributes"],
        _put({"user_id": "u"}, "custom_attributes"),
    ),
}


@pytest.mark.parametrize("kind", ["interactions", "products", "users"])
def test_free_form_attributes_agree_with_the_openapi_file(kind: Kind) -> None:
    """custom_context and custom_attributes: unions of scalars and arrays of one item kind."""
    seen: Counter[bool] = Counter()
    schema, wrap = FREE_FORM[kind]

    @settings(CONFORMANCE, max_examples=100)
    @given(record=values(schema, odds=5).map(wrap))
    def agree(record: Any) -> None:
        _agree(kind, record, seen)

    agree()
    assert seen[True] >= 20 and seen[False] >= 20, seen


@CONFORMANCE
@given(text=st.one_of(date_times(), NEAR_DATE_TIMES))
def test_timestamps_agree_with_the_date_time_format(text: str) -> None:
    record = {"type": "like", "timestamp": text}
    assert REFERENCE["interactions"].is_valid(record) == (
        RecordValidator("interactions", CONTRACT_ONLY).check(msgspec.json.encode(record)) is None
    )


def test_the_union_is_keyed_by_type() -> None:
    for ref in INTERACTION_ITEM["anyOf"]:
        schema = _inline(ref)
        assert "type" in schema["required"]
        assert schema["properties"]["type"]["enum"] == [schema["title"]]


def test_every_interaction_type_of_the_file_is_ours() -> None:
    titles = {_resolve(ref)["title"] for ref in INTERACTION_ITEM["anyOf"]}
    assert titles == set(INTERACTION_TYPES)
    for name, cls in INTERACTION_TYPES.items():
        schema = next(
            _resolve(r) for r in INTERACTION_ITEM["anyOf"] if _resolve(r)["title"] == name
        )
        assert set(cls.__struct_fields__) | {"type"} == set(schema["properties"]), name


@pytest.mark.skipif(not SHARED_SPEC.exists(), reason="no shared/ folder beside this checkout")
def test_the_copy_is_current() -> None:
    assert SPEC_PATH.read_bytes() == SHARED_SPEC.read_bytes()
