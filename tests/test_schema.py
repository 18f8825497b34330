"""The Miso record schema: what is valid, and what a user is told when it is not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from backfill.schema import (
    INTERACTION_TYPES,
    MISSING_IDENTITY,
    MISSING_TIMESTAMP,
    OUT_OF_WINDOW,
    Kind,
    Product,
    RecordInvalid,
    RecordValidator,
    Rules,
    User,
    miso_error_lines,
    parse_error_index,
    parse_timestamp,
)
from backfill.server import RunningServer
from tests import server_fixtures
from tests.helpers import dead_letters, run_engine, write_lines

TS = "2026-08-14T12:34:56.073Z"
BACKFILL = Rules()
CONTRACT_ONLY = Rules(require_timestamp=False, require_identity=False)
PRODUCT_ID = (
    'product_id: expected a string of 1 to 512 characters without "," and not starting with "_"'
)
DATE_TIME = "expected an ISO 8601 date-time with a time zone"
MIXED = "expected an array of numbers, an array of strings or an array of objects (not a mix)"
ATTRIBUTE = (
    "expected a boolean, a number, a string, or an array of numbers, of strings or of objects"
)
CONTEXT = {
    "campaign": {"name": "summer", "source": "newsletter", "medium": "email", "term": "t"},
    "truncated_ip": "203.0.113.0",
    "locale": "en-US",
    "region": "CA",
    "page": {"url": "https://shop.example/p/1", "referrer": "https://x.example/", "title": "P"},
    "user_agent": "Mozilla/5.0",
    "custom_context": {"flag": True, "n": 3, "x": 1.5, "s": "a", "ns": [1, 2.5], "ss": ["a"]},
}

# Written from miso-api.md, independently of the schema's own tables.
PRODUCT_TYPES = set(INTERACTION_TYPES) - {
    "search",
    "home_page_view",
    "category_page_view",
    "feedback",
}
TIMED = {
    "product_detail_page_view",
    "home_page_view",
    "category_page_view",
    "promo_page_view",
    "read",
    "watch",
    "listen",
}
FIELD_OWNERS: dict[str, tuple[set[str], Any]] = {
    "product_ids": (PRODUCT_TYPES, ["sku-1"]),
    "product_group_ids": (PRODUCT_TYPES, ["g-1"]),
    "duration": (TIMED, 12.5),
    "quantities": ({"add_to_cart", "checkout"}, [1, 2]),
    "revenue": ({"checkout"}, 19.99),
    "rating": ({"rate"}, 4),
    "search": ({"search"}, {"keywords": "red shoes", "filters": {"color": ["red"]}}),
    "category": ({"category_page_view"}, ["shoes", "sneakers"]),
    "question_id": ({"feedback"}, "q1"),
    "result_type": ({"feedback"}, "answer"),
    "value": ({"feedback"}, "yes"),
    "custom_action_name": ({"custom"}, "signup"),
}


def encode(record: dict[str, Any]) -> bytes:
    return msgspec.json.encode(record)


def check(
    record: dict[str, Any] | bytes, rules: Rules = BACKFILL, kind: Kind = "interactions"
) -> str | None:
    raw = record if isinstance(record, bytes) else encode(record)
    return RecordValidator(kind, rules).check(raw)


def full_record(type_name: str) -> dict[str, Any]:
    """Every field the type allows, each with a valid value."""
    record: dict[str, Any] = {
        "type": type_name,
        "user_id": "u-1",
        "anonymous_id": "a-1",
        "timestamp": TS,
        "miso_id": "0b6a4c3e-2f7d-4b8e-9a1c-5d6e7f809a1b",
        "context": CONTEXT,
    }
    for field, (owners, value) in FIELD_OWNERS.items():
        if type_name in owners:
            record[field] = value
    return record


# --- interactions: valid forms --------------------------------------------------------------


def test_the_contract_has_29_interaction_types() -> None:
    assert len(INTERACTION_TYPES) == 29


@pytest.mark.parametrize("type_name", sorted(INTERACTION_TYPES))
def test_every_type_is_valid_with_every_field_it_allows(type_name: str) -> None:
    assert check(full_record(type_name)) is None


@pytest.mark.parametrize("type_name", sorted(INTERACTION_TYPES))
def test_every_type_is_valid_with_type_alone_under_the_contract(type_name: str) -> None:
    record = (
        {"type": type_name}
        if type_name != "custom"
        else {"type": "custom", "custom_action_name": "x"}
    )
    assert check(record, CONTRACT_ONLY) is None
    assert miso_error_lines("interactions", [encode(record)]) == []


@pytest.mark.parametrize(
    ("field", "type_name"),
    [(f, t) for f in FIELD_OWNERS for t in sorted(INTERACTION_TYPES)],
)
def test_a_type_specific_field_is_allowed_on_its_types_only(field: str, type_name: str) -> None:
    owners, value = FIELD_OWNERS[field]
    record = {"type": type_name, "user_id": "u", "timestamp": TS, field: value}
    if type_name == "custom":
        record.setdefault("custom_action_name", "x")
    reason = check(record)
    if type_name in owners:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(f'field "{field}" is not allowed on type')


def test_a_field_on_one_type_names_its_owner() -> None:
    record = {"type": "add_to_cart", "user_id": "u", "timestamp": TS, "revenue": 3}
    assert (
        check(record) == 'field "revenue" is not allowed on type "add_to_cart" (only on checkout)'
    )


def test_a_pretty_printed_non_ascii_record_is_valid() -> None:
    record = full_record("add_to_cart") | {"user_id": "usuário-ß-😀"}
    assert check(json.dumps(record, indent=2, ensure_ascii=False).encode()) is None
    assert check(json.dumps(record, ensure_ascii=True).encode()) is None


def test_lengths_count_characters_not_bytes() -> None:
    base = {"type": "like", "timestamp": TS}
    assert check(base | {"user_id": "😀" * 512}) is None
    assert check(base | {"user_id": "u", "product_ids": ["é" * 512]}) is None
    assert check(base | {"anonymous_id": "a" * 1024}) is None
    assert check(base | {"user_id": "😀" * 513}) == (
        "user_id: expected a string of at most 512 characters, "
        'got a string of 513 characters starting "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀"'
    )
    assert check(base | {"anonymous_id": "a" * 1025}) is not None


# --- interactions: reasons ------------------------------------------------------------------

REASONS: list[tuple[bytes | dict[str, Any], str]] = [
    (
        {"type": "like", "user_id": "u", "timestamp": "yesterday"},
        'timestamp: expected an ISO 8601 date-time with a time zone, got "yesterday"',
    ),
    (
        {"type": "add_to_cart", "user_id": "u", "timestamp": TS, "product_ids": "abc"},
        'product_ids: expected an array of strings, got "abc"',
    ),
    (
        {"type": "add_to_cart", "user_id": "u", "timestamp": TS, "product_ids": ["a", 7]},
        "product_ids[1]: expected a string of at most 512 characters, got 7",
    ),
    ({"type": "foo", "user_id": "u"}, 'type: unknown interaction type "foo"'),
    ({"type": 5, "user_id": "u"}, "type: expected an interaction type name (a string), got 5"),
    ({"user_id": "u", "timestamp": TS}, 'missing required field "type"'),
    (
        {"type": "like", "user_id": "u", "timestamp": TS, "foo": 1},
        'unknown field "foo" (extra information belongs in context.custom_context)',
    ),
    (
        {"type": "search", "user_id": "u", "timestamp": TS, "product_ids": ["a"]},
        'field "product_ids" is not allowed on type "search"',
    ),
    (
        {"type": "custom", "user_id": "u", "timestamp": TS},
        'missing required field "custom_action_name"',
    ),
    (
        {"type": "like", "user_id": "u", "timestamp": TS, "context": {"page": {"title": "t"}}},
        'context.page: missing required field "url"',
    ),
    (
        {"type": "like", "user_id": "u", "timestamp": TS, "context": {"page": {"url": 5}}},
        "context.page.url: expected a string, got 5",
    ),
    (
        {
            "type": "like",
            "user_id": "u",
            "timestamp": TS,
            "context": {"truncated_ip": "10.0.0.256"},
        },
        'context.truncated_ip: expected an IPv4 address, got "10.0.0.256"',
    ),
    (
        {
            "type": "like",
            "user_id": "u",
            "timestamp": TS,
            "context": {"custom_context": {"k": None}},
        },
        "context.custom_context.k: expected a boolean, a number, a string, "
        "or an array of numbers, of strings or of objects, got null",
    ),
    (
        {
            "type": "like",
            "user_id": "u",
            "timestamp": TS,
            "context": {"custom_context": {"k": [1, "a"]}},
        },
        "context.custom_context.k: expected an array of numbers, an array of strings or an array "
        'of objects (not a mix), got [1,"a"]',
    ),
    (
        {"type": "checkout", "user_id": "u", "timestamp": TS, "quantities": "two"},
        'quantities: expected an array of numbers or a number, got "two"',
    ),
    (
        {"type": "rate", "user_id": "u", "timestamp": TS, "rating": "5"},
        'rating: expected a number, got "5"',
    ),
    (
        {"type": "like", "user_id": "u", "timestamp": TS, "miso_id": "not-a-uuid"},
        'miso_id: expected a UUID, got "not-a-uuid"',
    ),
    (
        {"type": "search", "user_id": "u", "timestamp": TS, "search": {"filters": {"c": "red"}}},
        'search.filters.c: expected an array of strings, got "red"',
    ),
    ({"type": "like", "timestamp": TS}, MISSING_IDENTITY),
    ({"type": "like", "user_id": "", "timestamp": TS}, MISSING_IDENTITY),
    ({"type": "like", "user_id": "u"}, MISSING_TIMESTAMP),
    (b'{"type": "like", "user_id": "u"', "malformed JSON: Input data was truncated"),
    (
        b'{"type": "like" "user_id": "u"}',
        "malformed JSON: JSON is malformed: expected ',' or '}' (byte 16)",
    ),
    (b'{"type": "like", "user_id": "\xff"}', "invalid UTF-8 at byte 29: invalid start byte"),
    (b"[1, 2]", "expected a JSON object, got [1,2]"),
    (
        b'{"type": "like", "context": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
        "malformed JSON: nested too deeply",
    ),
]


@pytest.mark.parametrize(("record", "reason"), REASONS, ids=[r for _, r in REASONS])
def test_the_reason_is_in_the_users_terms(record: dict[str, Any] | bytes, reason: str) -> None:
    assert check(record) == reason


def test_a_long_offending_value_is_shortened() -> None:
    reason = check(
        {
            "type": "like",
            "user_id": "u",
            "timestamp": TS,
            "context": {"locale": ["x" * 100]},
        }
    )
    assert reason == 'context.locale: expected a string, got ["' + "x" * 55 + "..."


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-08-14T12:34:56Z",
        "2026-08-14t12:34:56z",
        "2026-08-14T12:34:56.1+05:30",
        "2026-08-14T12:34:56.123456789-00:00",
        "2024-02-29T00:00:00Z",
        "0001-01-01T00:00:00+23:59",
        "1998-12-31T23:59:60Z",  # a leap second
        "1998-12-31T15:59:60.123-08:00",  # the same leap second, seen from UTC-8
        "2016-12-31t23:59:60.5z",
    ],
)
def test_rfc3339_timestamps_are_valid(timestamp: str) -> None:
    assert check({"type": "like", "user_id": "u", "timestamp": timestamp}) is None
    assert parse_timestamp(timestamp) is not None


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-08-14T12:34:56",  # no time zone
        "2026-08-14 12:34:56Z",
        "2026-08-14T12:34:56+0100",
        "2026-08-14T12:34:56+01",
        "2026-08-14T12:34Z",
        "2025-02-29T00:00:00Z",
        "2026-08-14T24:00:00Z",
        "2026-08-14T12:34:60Z",
        "1998-12-31T23:59:61Z",
        "1998-12-31T23:58:60Z",  # a leap second falls on the last minute of a UTC day
        "1998-12-31T22:59:60Z",
        "1998-12-31T23:59:60+01:00",  # 22:59:60 UTC
        "1998-12-31T23:59:60",
        "2026-08-14",
        "1723638896",
        "",
    ],
)
def test_other_timestamps_are_invalid(timestamp: str) -> None:
    reason = check({"type": "like", "user_id": "u", "timestamp": timestamp})
    assert reason == f"timestamp: {DATE_TIME}, got {json.dumps(timestamp)}"
    assert parse_timestamp(timestamp) is None


def test_a_leap_second_counts_as_the_second_before_it_in_the_window() -> None:
    assert parse_timestamp("1998-12-31T15:59:60.25-08:00") == datetime(
        1998, 12, 31, 23, 59, 59, 250_000, tzinfo=UTC
    )
    new_year = datetime(1999, 1, 1, tzinfo=UTC)
    record = {"type": "like", "user_id": "u", "timestamp": "1998-12-31T23:59:60Z"}
    assert check(record, Rules(until=new_year)) is None
    assert check(record, Rules(since=new_year)) is OUT_OF_WINDOW


def test_a_numeric_timestamp_is_invalid() -> None:
    reason = check({"type": "like", "user_id": "u", "timestamp": 1723638896})
    assert reason == "timestamp: expected an ISO 8601 date-time with a time zone, got 1723638896"


# --- rules ----------------------------------------------------------------------------------


def test_relaxed_rules_accept_missing_timestamp_and_identity() -> None:
    record = {"type": "like"}
    assert check(record) == MISSING_TIMESTAMP
    assert check(record, Rules(require_timestamp=False)) == MISSING_IDENTITY
    assert check(record, Rules(require_identity=False)) == MISSING_TIMESTAMP
    assert check(record, CONTRACT_ONLY) is None
    assert check({"type": "like", "anonymous_id": "a", "timestamp": TS}) is None


def test_the_window_includes_since_and_excludes_until() -> None:
    since = datetime(2026, 8, 14, tzinfo=UTC)
    rules = Rules(since=since, until=since + timedelta(days=1))
    verdicts = {
        ts: check({"type": "like", "user_id": "u", "timestamp": ts}, rules)
        for ts in [
            "2026-08-13T23:59:59.999Z",
            "2026-08-14T00:00:00Z",
            "2026-08-14T01:59:59+02:00",
            "2026-08-14T23:59:59.999-00:00",
            "2026-08-15T00:00:00Z",
            "2026-08-14T20:00:00-04:00",
        ]
    }
    assert verdicts == {
        "2026-08-13T23:59:59.999Z": OUT_OF_WINDOW,
        "2026-08-14T00:00:00Z": None,
        "2026-08-14T01:59:59+02:00": OUT_OF_WINDOW,
        "2026-08-14T23:59:59.999-00:00": None,
        "2026-08-15T00:00:00Z": OUT_OF_WINDOW,
        "2026-08-14T20:00:00-04:00": OUT_OF_WINDOW,
    }
    assert all(v is OUT_OF_WINDOW for v in verdicts.values() if v is not None)


def test_the_window_is_judged_after_validity() -> None:
    rules = Rules(since=datetime(2030, 1, 1, tzinfo=UTC))
    assert check({"type": "like", "timestamp": TS}, rules) == MISSING_IDENTITY
    assert check({"type": "like", "user_id": "u", "timestamp": TS}, rules) is OUT_OF_WINDOW
    relaxed = Rules(require_timestamp=False, since=datetime(2030, 1, 1, tzinfo=UTC))
    assert check({"type": "like", "user_id": "u"}, relaxed) is None  # no timestamp: not filtered


def test_window_bounds_must_be_aware() -> None:
    with pytest.raises(ValueError, match=r"Rules\.since must be time-zone aware"):
        RecordValidator("interactions", Rules(since=datetime(2026, 1, 1)))
    RecordValidator(
        "interactions", Rules(until=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    )


def test_decode_returns_the_struct_or_raises_the_reason() -> None:
    validator = RecordValidator("interactions", Rules(until=datetime(2000, 1, 1, tzinfo=UTC)))
    record: Any = validator.decode(encode(full_record("checkout")))
    assert (record.revenue, record.timestamp, record.context.page.url) == (
        19.99,
        TS,
        "https://shop.example/p/1",
    )
    assert type(record) is INTERACTION_TYPES["checkout"]
    with pytest.raises(RecordInvalid, match=r"^missing timestamp"):
        validator.decode(b'{"type": "like", "user_id": "u"}')


# --- products and users ---------------------------------------------------------------------

PRODUCT = {
    "product_id": "sku-1",
    "title": "Red shoe",
    "description": "A shoe",
    "categories": [["Shoes", "Sneakers"]],
    "tags": ["red"],
    "brand": "Acme",
    "original_price": 120,
    "sale_price": 99.5,
    "availability": "IN_STOCK",
    "condition": "NEW",
    "created_at": "2024-01-31",
    "updated_at": "2026-08-14T12:34:56Z",
    "url": "https://shop.example/p/sku-1",
    "cover_image": "https://cdn.example/sku-1.jpg",
    "location": [{"lat": 1.5, "lon": 2}],
    "children": [{"id": "c1", "custom_attributes": {"o": {"a": 1}}}],
    "custom_attributes": {"sizes": [40, 41], "meta": {"a": "b"}, "rows": [{"x": [1]}]},
}
USER = {"user_id": "u-1", "name": "Ana", "age": 31, "city": "Lisbon", "created_at": "2020-05-01"}


@pytest.mark.parametrize(
    ("kind", "record", "reason"),
    [
        ("products", PRODUCT, None),
        ("users", USER, None),
        ("users", {"user_id": "u", "age": 30.0}, None),  # JSON Schema's integer
        (
            "products",
            {"product_id": "_ids"},
            PRODUCT_ID + ', got "_ids"',
        ),
        (
            "products",
            {"product_id": "a,b"},
            PRODUCT_ID + ', got "a,b"',
        ),
        (
            "products",
            {"product_id": ""},
            PRODUCT_ID + ', got ""',
        ),
        ("products", {"title": "x"}, 'missing required field "product_id"'),
        (
            "products",
            {"product_id": "p", "price": 3},
            'unknown field "price" (extra information belongs in custom_attributes)',
        ),
        (
            "products",
            {"product_id": "p", "availability": "SOLD_OUT"},
            'availability: expected one of "IN_STOCK", "OUT_OF_STOCK", "PRE_ORDER", got "SOLD_OUT"',
        ),
        (
            "products",
            {"product_id": "p", "url": "/p/1"},
            'url: expected an absolute URI (a scheme such as https: and no spaces), got "/p/1"',
        ),
        (
            "products",
            {"product_id": "p", "created_at": "2023-02-29"},
            f'created_at: {DATE_TIME}, or a date (YYYY-MM-DD), got "2023-02-29"',
        ),
        (
            "products",
            {"product_id": "p", "location": {"lat": 1}},
            'location: missing required field "lon"',
        ),
        (
            "products",
            {"product_id": "p", "children": [{"id": "c", "custom_attributes": {"k": ["a", 1]}}]},
            f'children[0].custom_attributes.k: {MIXED}, got ["a",1]',
        ),
        (
            "users",
            {"user_id": "_u"},
            'user_id: expected a string of 1 to 512 characters not starting with "_", got "_u"',
        ),
        ("users", {"user_id": "a,b"}, None),
        ("users", {"user_id": "u", "age": 30.5}, "age: expected an integer, got 30.5"),
        (
            "users",
            {"user_id": "u", "custom_attributes": {"o": {"a": 1}}},
            f'custom_attributes.o: {ATTRIBUTE}, got {{"a":1}}',
        ),
    ],
)
def test_products_and_users(kind: Kind, record: dict[str, Any], reason: str | None) -> None:
    assert check(record, Rules(), kind) == reason


def test_backfill_rules_do_not_apply_to_products_and_users() -> None:
    strict = Rules(since=datetime(2030, 1, 1, tzinfo=UTC))
    assert check(PRODUCT, strict, "products") is None
    assert check(USER, strict, "users") is None
    assert isinstance(RecordValidator("products", strict).decode(encode(PRODUCT)), Product)
    user = RecordValidator("users", strict).decode(encode(USER))
    assert isinstance(user, User) and user.user_id == "u-1"


# --- Miso's 422 lines -----------------------------------------------------------------------


def test_miso_error_lines_name_each_bad_record_by_index() -> None:
    records = [
        encode({"type": "like"}),  # valid under the contract: no backfill rules server-side
        encode({"type": "add_to_cart", "product_ids": "abc"}),
        encode({"type": "like", "timestamp": "yesterday"}),
        encode({"type": "like"}),
        encode({"type": "nope"}),
        encode({"type": "like", "extra": 1}),
        b"{oops",
        encode({"type": "like", "context": {"page": {}}}),
        encode({"type": "like", "user_id": "x" * 513}),
    ]
    assert miso_error_lines("interactions", records) == [
        "data.1.product_ids is invalid. The attribute was expected to be of type ''array'' "
        "but type 'string' was given.",
        "data.2.timestamp is invalid. The attribute should match the 'date-time' format.",
        'data.4.type ("nope") is invalid. Is not one of the 29 interaction types.',
        "data.5 is invalid. The property extra is not defined and the definition does not allow "
        "additional properties.",
        "data.6 is invalid. The record is not valid JSON: JSON is malformed: "
        "object keys must be strings (byte 1).",
        "data.7.context.page is invalid. The property url is required.",
        "data.8.user_id is invalid. Must be at most 512 characters long.",
    ]


def test_miso_error_lines_for_products_and_users() -> None:
    products = [encode(PRODUCT), encode({"product_id": "p", "condition": "MINT"})]
    assert miso_error_lines("products", products) == [
        'data.1.condition ("MINT") is invalid. Does not have a value in the enumeration '
        '["NEW", "REFURBISHED", "USED"].'
    ]
    assert miso_error_lines("users", [encode({"user_id": "_x"}), encode(USER)]) == [
        "data.0.user_id (\"_x\") is invalid. Must not start with '_'."
    ]


@pytest.mark.parametrize(
    ("line", "index"),
    [
        ("data.0.product_ids is invalid. The attribute was expected ...", 0),
        ("data.12 is invalid. The property x is required.", 12),
        ('data.3.type ("foo") is invalid.', 3),
        ("data.7", 7),
        ("data.x.y is invalid.", None),
        ("something else", None),
        ("data.1a is invalid", None),
    ],
)
def test_parse_error_index(line: str, index: int | None) -> None:
    assert parse_error_index(line) == index


def test_every_miso_line_parses_back_to_its_index() -> None:
    bad = [encode({"type": "like", "rating": 1}), b"[", encode({"type": "rate", "rating": "x"})]
    lines = miso_error_lines("interactions", bad)
    assert [parse_error_index(line) for line in lines] == [0, 1, 2]


# --- keys given twice -----------------------------------------------------------------------

TWICE = "an object may give each key only once"
DUPLICATES = [
    (
        b'{"type":"search","type":"home_page_view","user_id":"u","timestamp":"'
        + TS.encode()
        + b'"}',
        f'duplicate key "type": {TWICE}',
    ),
    (
        b'{"type":"like","user_id":5,"user_id":"u","timestamp":"' + TS.encode() + b'"}',
        f'duplicate key "user_id": {TWICE}',
    ),
    (
        b'{"type":"like","user_id":"u","timestamp":"' + TS.encode() + b'","user_id":[1]}',
        f'duplicate key "user_id": {TWICE}',
    ),
    (
        b'{"type":"like","user_id":"u","context":{"locale":"a","locale":["b"]}}',
        f'context: duplicate key "locale": {TWICE}',
    ),
    (
        b'{"type":"like","user_id":"u","context":{"custom_context":{"n":1,"n":[1,"a"]}}}',
        f'context.custom_context: duplicate key "n": {TWICE}',
    ),
]


@pytest.mark.parametrize(("raw", "reason"), DUPLICATES, ids=[r for _, r in DUPLICATES])
def test_a_refused_record_with_a_key_given_twice_names_that_key(raw: bytes, reason: str) -> None:
    assert check(raw, CONTRACT_ONLY) == reason


def test_keys_given_twice_in_products_and_their_children() -> None:
    products = [
        b'{"product_id":"a","product_id":"_b"}',
        b'{"product_id":"a","children":[{"id":"x"},{"id":"y","id":5}]}',
    ]
    assert [check(p, kind="products") for p in products] == [
        f'duplicate key "product_id": {TWICE}',
        f'children[1]: duplicate key "id": {TWICE}',
    ]
    assert miso_error_lines("products", products) == [
        "data.0 is invalid. The property product_id is defined more than once.",
        "data.1.children.1 is invalid. The property id is defined more than once.",
    ]


def test_a_key_given_twice_with_valid_values_keeps_the_last() -> None:
    """Every value given is validated; when all are valid the record is, as most JSON readers
    (Miso's among them, presumably) keep the last value."""
    raw = b'{"type":"like","user_id":"u1","user_id":"u2","timestamp":"' + TS.encode() + b'"}'
    assert check(raw) is None
    assert RecordValidator("interactions", BACKFILL).decode(raw).user_id == "u2"


# --- the embedded server validates with this module -----------------------------------------

miso = server_fixtures.miso
http = server_fixtures.http


async def test_the_server_accepts_a_leap_second_and_names_a_key_given_twice(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    leap = b'{"type":"like","user_id":"u","timestamp":"2016-12-31T23:59:60.5Z"}'
    async with http.post("/v1/interactions", data=b'{"data":[' + leap + b"]}") as r:
        assert r.status == 200
    assert miso.records("interactions") == [leap]
    bad = [
        b'{"type":"like","user_id":"u","timestamp":"2016-12-31T23:58:60Z"}',
        b'{"type":"like","user_id":5,"user_id":"u"}',
    ]
    async with http.post("/v1/interactions", data=b'{"data":[' + b",".join(bad) + b"]}") as r:
        assert r.status == 422
        assert (await r.json())["data"] == [
            "data.0.timestamp is invalid. The attribute should match the 'date-time' format.",
            "data.1 is invalid. The property user_id is defined more than once.",
        ]
    assert miso.records("interactions") == [leap]


async def test_a_run_loads_a_leap_second_and_dead_letters_a_key_given_twice(
    tmp_path: Path, server: RunningServer
) -> None:
    leap = b'{"type":"like","user_id":"u","timestamp":"1998-12-31T23:59:60Z"}'
    twice = b'{"type":"like","user_id":"u","timestamp":"1998-12-31T23:00:00Z","type":"rate"}'
    path = write_lines(tmp_path / "in.jsonl", [leap, twice])
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], max_invalid_ratio=1.0
    )
    assert server.records("interactions") == [leap]
    [entry] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert (entry["line"], entry["reason"]) == (2, f'duplicate key "type": {TWICE}')
    assert report["exit_code"] == 0 and report["records_accepted"] == 1
