"""Rewriting id and IP values inside JSON lines without decoding whole records."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import ne
from typing import Final

import msgspec

CACHE_SIZE: Final = 1 << 16  # rewritten values remembered (a user's events come in runs)


class KeyRewriter:
    """Rewrites the string value of the keys `names` wherever they appear in JSON text,
    without decoding it.

    One regex per name, beginning with the literal `"name"` (so it scans at C speed), splits
    the text into [text, `"name":"`, value, text, ...]; the values are replaced in one slice
    assignment from a cache, so Python runs only for a value not seen before. The quote
    before `name` cannot be inside a string value (it would be escaped there, and an escaped
    quote is not followed by a name and then a structural quote and a colon), so a match is
    a key; an escaped quote inside the value is kept whole by the value pattern.
    """

    def __init__(self, names: Sequence[str], rewrite: Callable[[bytes], bytes | None]) -> None:
        self.names = [n.encode() for n in names]
        self.rewrite = rewrite  # raw string content -> new content, None to keep it
        self._cache = Rewritten(self._rewrite_new)  # values repeat: a user's events, an IP
        self._split = [
            re.compile(rb'("%s"[ \t\r]*:[ \t\r]*")((?:[^"\\\n]|\\.)*)(?=")' % re.escape(n))
            for n in self.names
        ]

    def __call__(self, data: bytes) -> tuple[bytes, int]:
        changed = 0
        for pattern in self._split:
            pieces = pattern.split(data)
            if len(pieces) == 1:
                continue
            values = pieces[2::3]
            news = list(map(self._cache.__getitem__, values))
            changed += sum(map(ne, news, values))
            pieces[2::3] = news
            data = b"".join(pieces)
        return data, changed

    def _rewrite_new(self, raw: bytes) -> bytes:
        new = self.rewrite(raw)
        return raw if new is None else new


class Rewritten(dict[bytes, bytes]):
    """raw value -> rewritten value (itself when unchanged), computed once, bounded."""

    def __init__(self, compute: Callable[[bytes], bytes]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, raw: bytes) -> bytes:
        if len(self) >= CACHE_SIZE:
            self.clear()
        new = self[raw] = self.compute(raw)
        return new


_decode: Final = msgspec.json.decode
_encode: Final = msgspec.json.encode


class IdContext(msgspec.Struct):
    truncated_ip: str | None = None


class IdFields(msgspec.Struct):
    """The only fields the rewrite needs: msgspec skips the rest of the record unbuilt (a
    value of another type is a ValidationError, and the whole record takes the slow path)."""

    user_id: str | None = None
    anonymous_id: str | None = None
    context: IdContext | None = None


class Swaps(dict[str, tuple[bytes, bytes, bytes | None]]):
    """value -> (`"field":<value as JSON>`, the same with `": "`, the replacement or None to
    keep it), for one field: computed once per value, bounded."""

    def __init__(self, name: str, compute: Callable[[str], str]) -> None:
        super().__init__()
        self.name = name
        self.compute = compute

    def __missing__(self, value: str) -> tuple[bytes, bytes, bytes | None]:
        if len(self) >= CACHE_SIZE:
            self.clear()
        name = self.name
        new = self.compute(value)
        compact = encode_pair(name, value)
        spaced = compact.replace(b":", b": ", 1)
        found = self[value] = (compact, spaced, None if new == value else encode_pair(name, new))
        return found


def encode_pair(name: str, value: str) -> bytes:
    return b'"%s":%s' % (name.encode(), _encode(value))


def swap_value(line: bytes, swap: tuple[bytes, bytes, bytes | None]) -> bytes:
    """The line with `"field":value` replaced; Unusual when it is spelled another way."""
    compact, spaced, replacement = swap
    if replacement is None:
        return line
    if compact in line:
        return line.replace(compact, replacement)
    if spaced in line:
        return line.replace(spaced, replacement)
    raise Unusual


class Unusual(Exception):
    """A value spelled with escapes (or otherwise unlike its re-encoding): the regex path."""
