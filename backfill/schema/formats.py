"""Formats msgspec cannot state: RFC 3339 date-time, date, IPv4, URI, homogeneous arrays."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from backfill.schema.rules import _FieldError

_DATE_TIME: Final = "an ISO 8601 date-time with a time zone"
_DATE_TIME_MISO: Final = "The attribute should match the 'date-time' format."
# Checked by RecordValidator (see parse_timestamp); the length rules out short texts in C.
_Timestamp = Annotated[
    str, Meta(min_length=20, extra={"expected": _DATE_TIME, "miso": _DATE_TIME_MISO})
]
_encode = msgspec.json.encode
_decode_aware_datetime = msgspec.json.Decoder(Annotated[datetime, Meta(tz=True)]).decode
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f]*")


def parse_timestamp(text: str) -> datetime | None:
    """The aware datetime of an RFC 3339 date-time (JSON Schema's `date-time`), else None.

    msgspec's parser is fast and calendar-exact but also takes a space separator and "+HHMM"
    offsets, which RFC 3339 rejects: the shape test first rules those out (and is cheaper).
    """
    if len(text) < 20 or text[10] not in "Tt" or (text[-1] not in "Zz" and text[-3] != ":"):
        return None
    try:
        when: datetime = _decode_aware_datetime(_encode(text))
    except msgspec.ValidationError:
        return _leap_second(text)
    return when


_LEAP: Final = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:)60(\.[0-9]+)?")


def _leap_second(text: str) -> datetime | None:
    """RFC 3339 allows second 60, a leap second, which falls at 23:59:60 UTC (15:59:60-08:00).

    Neither msgspec nor datetime can hold it: the moment returned is the second before it
    (for --since/--until). Reached only when the fast parse failed."""
    leap = _LEAP.match(text)
    if leap is None:
        return None
    try:
        when: datetime = _decode_aware_datetime(_encode(f"{leap[1]}59{text[leap.end(1) + 2 :]}"))
        utc = when.astimezone(UTC)
    except (msgspec.ValidationError, OverflowError):
        return None
    return when if (utc.hour, utc.minute) == (23, 59) else None


def _is_date_or_date_time(text: str) -> bool:
    if parse_timestamp(text) is not None:
        return True
    if _DATE.fullmatch(text) is None:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# JSON Schema's ipv4: four decimal octets, no leading zeros; one C-level match (hot path)
_is_ipv4: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}").fullmatch


def _is_mixed(items: list[Any]) -> bool:
    """JSON Schema's anyOf [number[], string[], object[]]: one item kind per array."""
    return len({dict if type(i) is dict else str if type(i) is str else float for i in items}) > 1


def _mixed_key(attributes: Mapping[str, Any]) -> str | None:
    """The first key whose array mixes numbers, strings and objects."""
    for key, value in attributes.items():
        if type(value) is list and len(value) > 1 and _is_mixed(value):
            return key
    return None


_MIXED: Final = "an array of numbers, an array of strings or an array of objects (not a mix)"
_MIXED_MISO: Final = "Failed to match at least one schema."


def _check_arrays(attributes: Mapping[str, Any], field: str) -> None:
    key = _mixed_key(attributes)
    if key is not None:
        raise _FieldError((field, key), _MIXED, _MIXED_MISO)
