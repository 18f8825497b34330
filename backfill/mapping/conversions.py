"""The value conversions of a mapping (see spec.CONVERSIONS), built once per field.

They run on every record, so each is a plain function of one value. Date-time conversions
remember their recent inputs: event logs repeat the same second many times over, and a dict
hit is far cheaper than a parse. A value a conversion cannot take raises ConversionError with
the value and what was expected; the caller adds the source field's name.
"""

from __future__ import annotations

import email.utils
import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, NamedTuple

import msgspec

Converter = Callable[[Any], Any]

CACHE_SIZE: Final = 8192
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TRUE: Final = frozenset({"true", "1", "yes", "y", "t"})
_FALSE: Final = frozenset({"false", "0", "no", "n", "f"})
_ZONE_WORDS: Final = frozenset({"UTC", "GMT"})
_SPACED_OFFSET: Final = re.compile(r"(.*\d)\s+([+-]\d\d:?\d\d)")
_LEAP_SECOND: Final = re.compile(r"[0-9]{2}:[0-9]{2}:(60)(?![0-9])")
_isfinite: Final = math.isfinite
_MAX_DIGITS: Final = sys.get_int_max_str_digits()


class ConversionError(ValueError):
    """A value a conversion cannot take; str() says which value and what was expected."""


def shown(value: Any) -> str:
    """A value as the user wrote it, shortened for a dead-letter reason."""
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    text = text if len(text) <= 80 else text[:77] + "..."
    return msgspec.json.encode(text).decode() if isinstance(value, str) else text


def text_of(value: Any) -> str:
    """The text of a scalar, as a CSV file would hold it (for value maps and drop rules)."""
    if type(value) is str:
        return value
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is float and value.is_integer():
        return str(int(value))
    if type(value) is int or type(value) is float:
        return str(value)
    return msgspec.json.encode(value).decode()


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is dict:
        raise ConversionError(f"expected a single value, got the object {shown(value)}")
    return text_of(value)


def _number(value: Any) -> int | float:
    kind = type(value)
    if kind is int or kind is float:
        return value  # type: ignore[no-any-return]
    if kind is str:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if _isfinite(number):
            if number.is_integer() and value.strip().lstrip("+-").isdigit():
                return _whole(value)
            return number
    raise ConversionError(f"cannot parse {shown(value)} as a number")


def _whole(text: str) -> int:
    """Python refuses to read an integer of more than 4300 digits (leading zeros count)."""
    try:
        return int(text)
    except ValueError:
        raise ConversionError(
            f"cannot parse {shown(text)} as a number (more than {_MAX_DIGITS} digits)"
        ) from None


def _integer(value: Any) -> int:
    number = _number(value) if type(value) is not bool else None
    if type(number) is int:
        return number
    if type(number) is float and number.is_integer():
        return int(number)
    raise ConversionError(f"cannot parse {shown(value)} as a whole number")


def _boolean(value: Any) -> bool:
    if value is True or value is False:
        return value
    text = text_of(value).strip().lower() if type(value) is not dict else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConversionError(f"cannot parse {shown(value)} as a boolean (true/false, 1/0, yes/no)")


def _lower(value: Any) -> str:
    return _string(value).lower()


def _upper(value: Any) -> str:
    return _string(value).upper()


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else [value]


def _split(separator: str) -> Converter:
    def split(value: Any) -> list[str]:
        if type(value) is list:
            return value
        return [part for part in map(str.strip, _string(value).split(separator)) if part]

    return split


def iso(moment: datetime) -> str:
    """Miso's preferred form: UTC, milliseconds, "Z" (a naive moment is taken as UTC).

    Plain isoformat() and slicing: the `timespec` argument alone doubles the cost."""
    if moment.tzinfo is not None:
        text = moment.astimezone(UTC).isoformat()[:-6]
    else:
        text = moment.isoformat()
    return text[:23] + "Z" if moment.microsecond else text + ".000Z"


def _canonical(text: str) -> str | None:
    """ "2019-10-01 00:00:00[.123]" in Miso's form by slicing, once it is known to parse."""
    n = len(text)
    shaped = (n == 19 or (n == 23 and text[19] == ".")) and text[4] == text[7] == "-"
    if shaped and text[10] in " T" and text[13] == text[16] == ":":
        return f"{text[:10]}T{text[11:]}{'' if n == 23 else '.000'}Z"
    return None


def _remembered(parse: Converter, what: str) -> tuple[Converter, dict[Any, Any]]:
    """`parse` remembering its recent results (and the cache, for inline lookups).

    Only for conversions of few distinct values whose results are never changed afterwards
    (date-times, split category paths): a result may be shared by many records."""
    cache: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        try:
            return cache[value]
        except KeyError:
            pass
        except TypeError:  # unhashable: a list or an object
            raise ConversionError(f"expected {what}, got {shown(value)}") from None
        result = parse(value)
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[value] = result
        return result

    return convert, cache


def _datetime(zone: tzinfo, formats: list[str]) -> Converter:
    expected = (
        f"expected date_format {' or '.join(map(shown, formats))}"
        if formats
        else "expected ISO 8601 such as 2019-10-01 00:00:00 or 2019-10-01T00:00:00Z"
    )
    naive_is_utc = zone is UTC

    def parse(value: Any) -> str:
        if type(value) is not str:
            raise ConversionError(
                f"cannot parse {shown(value)} as a date-time ({expected}); for a number of "
                'seconds or milliseconds since 1970 use convert = "epoch_s" or "epoch_ms"'
            )
        text = value.strip()
        # "2019-10-01 00:00:00 UTC" (a date_format says it with %Z itself)
        utc = not formats and text[-3:] in _ZONE_WORDS and len(text) > 3
        if utc:
            text = text[:-3].rstrip()
        if formats:
            moment = _strptime(text, formats)
        else:
            try:
                moment = datetime.fromisoformat(text)
            except ValueError:
                moment = _fallback(text)
        if moment is None or (utc and moment.tzinfo is not None):
            raise ConversionError(f"cannot parse {shown(value)} as a date-time ({expected})")
        if moment.tzinfo is None:
            if not (utc or naive_is_utc):
                moment = moment.replace(tzinfo=zone)
            elif not formats:
                return _canonical(text) or iso(moment)
        try:
            return iso(moment)
        except OverflowError:  # year 1 or 9999 moved past the calendar by its offset
            raise ConversionError(f"{shown(value)} is out of range for a date-time") from None

    return parse


def _leap_seconds(parse: Converter) -> Converter:
    """RFC 3339's leap second (23:59:60 UTC), which datetime cannot hold: parsed as second 59
    and written back as 60 when it falls on the last minute of a UTC day."""

    def convert(value: Any) -> str:
        try:
            return str(parse(value))
        except ConversionError:
            leap = _LEAP_SECOND.search(value) if type(value) is str else None
            if leap is None:
                raise
            try:
                before = str(parse(f"{value[: leap.start(1)]}59{value[leap.end(1) :]}"))
            except ConversionError:
                before = ""
            if before[11:19] != "23:59:59":
                raise
            return f"{before[:17]}60{before[19:]}"

    return convert


def _strptime(value: str, formats: list[str]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


def _fallback(text: str) -> datetime | None:
    """Common relatives of ISO 8601: "2019-10-01 00:00:00.123 +02:00", RFC 2822 dates."""
    spaced = _SPACED_OFFSET.fullmatch(text)
    if spaced:
        try:
            return datetime.fromisoformat(spaced.group(1) + spaced.group(2))
        except ValueError:
            return None
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _epoch(per_second: int, name: str) -> Converter:
    def parse(value: Any) -> str:
        kind = type(value)
        number: int | float | None = None
        if kind is int or kind is float:
            number = value
        elif kind is str:
            try:
                number = _number(value)
            except ConversionError:
                number = None
        if number is None:
            raise ConversionError(f"cannot parse {shown(value)} as a date-time (expected {name})")
        try:
            if type(number) is int:
                seconds, rest = divmod(number, per_second)
                moment = EPOCH + timedelta(seconds=seconds, microseconds=rest * 1e6 / per_second)
            else:
                moment = EPOCH + timedelta(seconds=number / per_second)
            if not 1900 <= moment.year <= 9999:
                raise OverflowError
        except (OverflowError, ValueError):
            raise ConversionError(
                f"{shown(value)} is out of range for {name} (is the unit right?)"
            ) from None
        return iso(moment)

    return parse


class Conversion(NamedTuple):
    """A conversion and how to apply it (the mapping compiles these into its code)."""

    name: str
    convert: Converter
    each: bool  # applies to each item of a list, rather than to the list
    makes_list: bool
    cache: dict[Any, Any] | None = None  # convert's results by input, for inline lookups
    fallible: bool = True  # can raise ConversionError


def conversion(name: str, *, zone: tzinfo, formats: list[str], separator: str) -> Conversion:
    """The conversion called `name` (one of spec.CONVERSIONS), ready to run."""
    scalar: dict[str, Converter] = {
        "string": _string,
        "number": _number,
        "integer": _integer,
        "boolean": _boolean,
        "lower": _lower,
        "upper": _upper,
    }
    if name in scalar:
        return Conversion(name, scalar[name], each=True, makes_list=False)
    if name == "list":
        return Conversion(name, _list, each=False, makes_list=True, fallible=False)
    if name == "split":
        convert, cache = _remembered(_split(separator), "a text")
        return Conversion(name, convert, each=False, makes_list=True, cache=cache)
    units = {"epoch_s": 1, "epoch_ms": 1000, "epoch_us": 1_000_000}
    if name == "datetime":
        convert, cache = _remembered(_leap_seconds(_datetime(zone, formats)), "a date-time")
    elif name in units:
        convert, cache = _remembered(_epoch(units[name], name), "a date-time")
    else:
        raise ValueError(f"unknown conversion {name!r}")
    return Conversion(name, convert, each=True, makes_list=False, cache=cache)
