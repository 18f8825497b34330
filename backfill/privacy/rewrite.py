"""Rewriting id and IP values inside JSON lines without decoding whole records."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import ne
from typing import Final

import msgspec

from backfill.errors import UsageError
from backfill.privacy.settings import implementation

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


Swap = tuple[bytes, bytes, bytes, bytes, bool]


class Swaps(dict[str, Swap]):
    """value -> (`"field":<value as JSON>`, the same with `": "`, the replacement (the pair
    itself when the value stays), `"field"`, whether the value changes), for one field:
    computed once per value, bounded by CACHE_SIZE entries (then cleared: a few MB at most,
    ids being at most 1 KiB)."""

    def __init__(self, name: str, compute: Callable[[str], str]) -> None:
        super().__init__()
        self.name = name
        self.compute = compute
        self.token = b'"%s"' % name.encode()

    def __missing__(self, value: str) -> Swap:
        if len(self) >= CACHE_SIZE:
            self.clear()
        name = self.name
        new = self.compute(value)
        compact = encode_pair(name, value)
        spaced = compact.replace(b":", b": ", 1)
        found = self[value] = (compact, spaced, encode_pair(name, new), self.token, new != value)
        return found


def encode_pair(name: str, value: str) -> bytes:
    return b'"%s":%s' % (name.encode(), _encode(value))


def splice(line: bytes, swap: Swap) -> bytes:
    """The line with its one `"field":value` pair replaced: the same JSON value as decoding
    the record, setting the field and encoding it again, for a line without `\\u` escapes
    (the caller's test: one could spell the key another way). Unusual when the bytes alone
    cannot say which pair the decoder read.

    Unusual when `"field"` appears more than once (a duplicate key, the same name in a nested
    object, the name as a string value) or the pair is spelled another way (escapes in the
    value, other whitespace). Otherwise the one `"field"` in the line is the key msgspec
    read: inside a JSON string every quote is escaped, so `"field"` cannot occur there.
    Two C-level scans of the line (count, replace): no Python runs per byte.
    """
    compact, spaced, replacement, token, changes = swap
    if not changes:
        return line
    if line.count(token) != 1:
        raise Unusual
    new = line.replace(compact, replacement, 1)
    if new is line:
        new = line.replace(spaced, replacement, 1)
        if new is line:
            raise Unusual
    return new


def escaped(line: bytes) -> bool:
    """Whether a `\\u` escape could spell a key another way (memchr first: most lines hold
    no backslash)."""
    return b"\\" in line and b"\\u" in line


class Unusual(Exception):
    """A pair the bytes cannot be trusted to locate (see `splice`): decode and encode."""


REWRITE_ENV: Final = "BACKFILL_ID_REWRITE"
REWRITES: Final = ("python", "compiled")
# (lines, targets, nested, marks) -> (changed per target, indices left to Python, indices
# holding a PII mark): see _splice.c; a target is (name, _splice.cache(limit), compute)
Compiled = Callable[
    [
        list[bytes],
        tuple[tuple[bytes, object, Callable[[bytes], bytes]], ...],
        tuple[bytes, bytes, object, Callable[[bytes], bytes]] | None,
        bool,
    ],
    tuple[list[int], list[int], list[int]],
]


def compiled_rewrite(name: str | None = None) -> Compiled | None:
    """The compiled id and IP rewrite and PII pre-filter (`_splice.rewrite`, built from C at
    install when a compiler is there), or None for the Python ones: $BACKFILL_ID_REWRITE
    names one ("python" or "compiled"), else the compiled one when it was built."""
    name = implementation(REWRITE_ENV, REWRITES, name)
    if name == "python":
        return None
    try:
        from backfill.privacy import _splice
    except ImportError as exc:
        if name:  # asked for by name: say why it is not there
            raise UsageError(
                f"${REWRITE_ENV} is compiled but the extension was not built ({exc}): "
                "reinstall with a C compiler present, or unset it"
            ) from None
        return None
    return _splice.rewrite  # type: ignore[return-value]  # its caches are opaque objects
