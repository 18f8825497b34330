"""The defects real logs have, each a deterministic function of a valid line and the RNG.

Lines are `str`; bytes that are not UTF-8 travel as lone surrogates and become raw bytes when
the writer encodes with `surrogateescape`. Every variant here is checked by the tests to fail
`RecordValidator("interactions", Rules())`; the rule-only kinds (see model.RULE_ONLY_KINDS)
pass Miso's own schema and fail only the backfill rules.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any, Final

import msgspec

from backfill.generate.catalog import SITE

UNKNOWN_TYPES: Final = ("page_view", "purchase", "addToCart", "Product Viewed", "CHECKOUT")
UNKNOWN_FIELDS: Final[tuple[tuple[str, Any], ...]] = (
    ("event_id", "evt_01J0XK3M9T"),
    ("ip", "203.0.113.7"),
    ("page_url", SITE + "/"),
    ("properties", {"source": "legacy-tracker"}),
    ("sent_at", "2026-06-01T00:00:00Z"),
)
TOKEN_CHARS: Final = string.ascii_letters + string.digits + "-_"


def _decode(line: str) -> dict[str, Any]:
    record: dict[str, Any] = msgspec.json.decode(line)
    return record


def _encode(record: dict[str, Any]) -> str:
    return msgspec.json.encode(record).decode() + "\n"


def malformed_json(line: str, rng: random.Random) -> str:
    body = line.rstrip("\n")
    variant = rng.randrange(4)
    if variant == 0:  # trailing comma, as hand-written JSON has
        return body[:-1] + ",}\n"
    if variant == 1:  # single quotes, as a Python repr logged by mistake has
        return body.replace('"', "'") + "\n"
    if variant == 2:  # a JavaScript NaN
        return body[:-1] + ',"score":NaN}\n'
    return body.replace('":"', '":', 1) + "\n"  # an unquoted value


def invalid_utf8(line: str, rng: random.Random) -> str:
    """Latin-1 text in a UTF-8 file: `café` as the single byte 0xE9, or stray 0xFF 0xFE."""
    garbage = "caf\udce9-" if rng.random() < 0.7 else "\udcff\udcfe"
    return line.replace(f'"url":"{SITE}/', f'"url":"{SITE}/{garbage}', 1)


def wrong_type(line: str, rng: random.Random) -> str:
    record = _decode(line)
    ids = record.get("product_ids")
    variant = rng.randrange(3) if ids else 2
    if variant == 0:  # a comma-separated string instead of an array
        record["product_ids"] = ",".join(ids or ())
    elif variant == 1:  # numeric ids from a database export
        record["product_ids"] = [int(pid[4:10]) for pid in ids or ()]
    elif "user_id" in record:
        record["user_id"] = int(record["user_id"][5:], 16)
    else:
        record["anonymous_id"] = int(record["anonymous_id"][5:], 16)
    return _encode(record)


def bad_timestamp(line: str, rng: random.Random) -> str:
    record = _decode(line)
    ts: str = record["timestamp"]
    variant = rng.randrange(5)
    if variant == 0:  # US style
        record["timestamp"] = f"{ts[5:7]}/{ts[8:10]}/{ts[0:4]} {ts[11:19]}"
    elif variant == 1:  # a day that does not exist
        record["timestamp"] = f"{ts[:8]}32{ts[10:]}"
    elif variant == 2:  # epoch milliseconds
        record["timestamp"] = 1_780_000_000_000 + rng.randrange(10**9)
    elif variant == 3:
        record["timestamp"] = ""
    else:
        record["timestamp"] = "undefined"
    return _encode(record)


def missing_timestamp(line: str, rng: random.Random) -> str:
    record = _decode(line)
    del record["timestamp"]
    return _encode(record)


def naive_timestamp(line: str, rng: random.Random) -> str:
    record = _decode(line)
    record["timestamp"] = record["timestamp"].rstrip("Z")
    return _encode(record)


def unknown_type(line: str, rng: random.Random) -> str:
    record = _decode(line)
    record["type"] = rng.choice(UNKNOWN_TYPES)
    return _encode(record)


def unknown_field(line: str, rng: random.Random) -> str:
    record = _decode(line)
    name, value = rng.choice(UNKNOWN_FIELDS)
    record[name] = value
    return _encode(record)


def missing_identity(line: str, rng: random.Random) -> str:
    record = _decode(line)
    record.pop("user_id", None)
    record.pop("anonymous_id", None)
    return _encode(record)


def oversized_string(line: str, rng: random.Random) -> str:
    """An id over its limit: a session token or a cookie dump pasted where an id belongs."""
    record = _decode(line)
    if record.get("product_ids") and rng.random() < 0.3:
        field, limit = "product_ids", 512
    elif "user_id" in record:
        field, limit = "user_id", 512
    else:
        field, limit = "anonymous_id", 1024
    value = "".join(rng.choices(TOKEN_CHARS, k=limit + 1 + rng.randrange(3 * limit)))
    record[field] = [value] if field == "product_ids" else value
    return _encode(record)


BREAK: Final[dict[str, Callable[[str, random.Random], str]]] = {
    "malformed_json": malformed_json,
    "invalid_utf8": invalid_utf8,
    "wrong_type": wrong_type,
    "bad_timestamp": bad_timestamp,
    "missing_timestamp": missing_timestamp,
    "naive_timestamp": naive_timestamp,
    "unknown_type": unknown_type,
    "unknown_field": unknown_field,
    "missing_identity": missing_identity,
    "oversized_string": oversized_string,
}


def truncate_line(line: str, rng: random.Random) -> str:
    """The last line of a log copied while it was being written: cut, no newline."""
    body = line.rstrip("\n")
    return body[: 8 + rng.randrange(max(1, len(body) - 10))]
