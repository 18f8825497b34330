"""What counts as PII and as a full IP address: the patterns, their bytes pre-filter, redaction.

The exact patterns run on decoded strings; the pre-filter (`candidate_offsets`) runs on raw
bytes and must find every line an exact pattern would (a test checks the superset property).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from typing import Any, Final

from backfill.errors import UsageError
from backfill.privacy.settings import implementation

PLACEHOLDER: Final = {"email": "[email]", "phone": "[phone]", "card": "[card]"}


# ---------------------------------------------------------------------------------------------
# IP truncation.
# ---------------------------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4: Final = re.compile(rf"({_OCTET}\.{_OCTET}\.{_OCTET})\.{_OCTET}")


def truncate_ip(text: str) -> str:
    """IPv4 to its /24 (a.b.c.0), IPv6 to its /48, an IPv4-mapped IPv6 to the IPv4's /24.

    Anything else is returned unchanged, so the validator dead-letters it as before.
    """
    found = _IPV4.fullmatch(text)
    if found is not None:
        return f"{found[1]}.0"
    if ":" not in text:
        return text
    try:
        address = ipaddress.IPv6Address(text.partition("%")[0])
    except ValueError:
        return text
    if address.ipv4_mapped is not None:
        return truncate_ip(str(address.ipv4_mapped))
    return str(ipaddress.IPv6Address(int(address) >> 80 << 80))


# ---------------------------------------------------------------------------------------------
# PII detection. The cores are shared by the exact (str) patterns and the bytes pre-filter, so
# every exact match is also a candidate. Separators include their URL-encoded forms.
# ---------------------------------------------------------------------------------------------

_SEP = r"(?:[ \-+]|%20)"
_EMAIL = r"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# cards as people write them: one run, 4-4-4-x, or 4-6-5 (American Express)
_CARD = (
    rf"(?:\d{{13,19}}|\d{{4}}(?:{_SEP}\d{{4}}){{2}}{_SEP}\d{{1,7}}"
    rf"|\d{{4}}{_SEP}\d{{6}}{_SEP}\d{{4,5}})"
)
_PLUS = r"(?:\+|%2[Bb])\d(?:(?:[ .\-()]|%20|%28|%29){0,2}\d){6,14}"
_NANP = rf"(?:(?:\(|%28)\d{{3}}(?:\)|%29){_SEP}?|\d{{3}}(?:{_SEP}|\.))\d{{3}}(?:{_SEP}|\.)\d{{4}}"
_NATIONAL = rf"0(?:\d{{2,4}}{_SEP}\d{{6,8}}|\d{{1,4}}{_SEP}\d{{3,4}}{_SEP}\d{{4}})"
# A number glued to letters, a path or a decimal point is an id, a SKU or a price.
_START = r"(?:(?<=%20)|(?<=%3[ADad])|(?<![A-Za-z0-9_./\-%]))"
_END = r"(?![A-Za-z0-9_]|[\-./]\d)"
_KINDS: Final = (
    ("email", rf"(?P<email>(?<![A-Za-z0-9._%+\-]){_EMAIL}(?![A-Za-z0-9\-]))"),
    ("plus", rf"(?P<plus>(?<![A-Za-z0-9_]){_PLUS}{_END})"),
    ("card", rf"(?P<card>{_START}{_CARD}{_END})"),
    ("phone", rf"(?P<phone>{_START}(?:{_NANP}|{_NATIONAL}){_END})"),
)


@functools.cache  # compiled when first needed: compiling all of them costs each process 10 ms
def _alternatives(email: bool, plus: bool, digits: bool) -> re.Pattern[str]:
    on = {"email": email, "plus": plus, "card": digits, "phone": digits}
    return re.compile("|".join(p for kind, p in _KINDS if on[kind]), re.ASCII)


_EXACT: Final = _alternatives(True, True, True)
# Python's re tries every alternative at every position (some 2 us per pattern for a short
# string): a string is searched only with the alternatives it can match, which give the same
# matches (an alternative that matches nowhere never wins). An email holds `@` or `%40`; a
# `plus` phone `+` or `%2B`; a card or another phone three digits in a row.
_THREE_DIGITS: Final = re.compile(r"[0-9]{3}")


def _exact_for(text: str) -> re.Pattern[str] | None:
    """The alternatives of _EXACT that can match in `text`; None when none can."""
    email = "@" in text or "%40" in text
    plus = "+" in text or "%2B" in text or "%2b" in text
    digits = _THREE_DIGITS.search(text) is not None
    return _alternatives(email, plus, digits) if email or plus or digits else None


# The pre-filter works on a skeleton of the bytes: digits become 0 and the separators 1 (the
# `%` of %20 too, so "555%202671" reads 000100000). Every exact match above holds `@`, `%40`,
# `%2B`, a `\u00..` escape, `+digit`, 13 digits in a row, or 3 digits, a separator and 4
# digits; timestamps, IPs, prices and hex ids hold none of them. One-byte marks are looked
# for first (memchr), so a block without `\`, `%` or `+` costs a translate and two finds.
# Every other byte becomes "x", which is in neither mark: the searches skip along the
# skeleton (a skeleton keeping the other bytes, many of them separators and digits of
# timestamps and versions, cost twice as much to search).
_SKELETON: Final = bytes(
    ord("0") if byte in b"0123456789" else 1 if byte in b" -.%+" else ord("x")
    for byte in range(256)
)
_SKELETON_MARKS: Final = (b"0" * 13, b"000\x010000")
_ESCAPED: Final = re.compile(rb"\\u00")  # a literal first byte: the regex scans at memchr speed
_PERCENT: Final = (b"40", b"2B", b"2b")  # %40 is @, %2B is +
_DIGITS: Final = frozenset(b"0123456789")
_DIGIT: Final = frozenset(bytes([d]) for d in b"0123456789")


def candidate_offsets(data: bytes) -> list[int]:
    """Offsets in `data` (a line, or lines joined by newlines) where PII may be; [] for
    none, the common case, which costs a few C-level scans of the bytes. `%` and `+` are
    found with memchr and their next bytes checked one by one (both are rare in logs)."""
    hits = _all(data, b"@")
    if b"\\" in data:
        hits += [found.start() for found in _ESCAPED.finditer(data)]
    hits += [pos for pos in _all(data, b"%") if data[pos + 1 : pos + 3] in _PERCENT]
    hits += [
        pos for pos in _all(data, b"+") if data[pos + 1 : pos + 2] and data[pos + 1] in _DIGITS
    ]
    skeleton = data.translate(_SKELETON)
    return hits + [pos for mark in _SKELETON_MARKS for pos in _all(skeleton, mark)]


# The same marks as regexes, for the compiled pre-filter (`backfill[fast]`: hyperscan): one
# pass over the block finds them all, in place of a translate and a search per mark.
_MARK_PATTERNS: Final = (
    rb"@",
    rb"\\u00",
    rb"%40",
    rb"%2[Bb]",
    rb"\+[0-9]",
    rb"[0-9]{13}",
    rb"[0-9]{3}[ \-.%+][0-9]{4}",
)
PREFILTERS: Final = ("python", "hyperscan")
PREFILTER_ENV: Final = "BACKFILL_PII_PREFILTER"


def prefilter(name: str | None = None) -> Callable[[bytes], list[int]]:
    """The pre-filter `name` ("python": `candidate_offsets`, or "hyperscan"); by default the
    one $BACKFILL_PII_PREFILTER names, else hyperscan when it is installed and runs on this
    CPU, else Python. Both find the same lines (the hyperscan offsets are a match's last
    byte, `candidate_offsets`'s its first: in the same line)."""
    name = implementation(PREFILTER_ENV, PREFILTERS, name)
    if name == "python":
        return candidate_offsets
    try:
        return _compiled()
    except (ImportError, RuntimeError) as exc:  # not installed, or a CPU it cannot run on
        if name:  # asked for by name: say why it is not there
            raise UsageError(
                f"${PREFILTER_ENV} is hyperscan but it cannot run here ({exc}): install "
                "backfill[fast] on an x86-64 CPU, or unset it"
            ) from None
        return candidate_offsets


def _compiled() -> Callable[[bytes], list[int]]:
    """The marks compiled into one hyperscan database (its own, with its scratch: one per
    step, so two steps in two threads never share a scratch)."""
    import hyperscan  # an optional extra (backfill[fast])

    count = len(_MARK_PATTERNS)
    try:
        database = hyperscan.Database()
        database.compile(expressions=list(_MARK_PATTERNS), ids=list(range(count)), elements=count)
    except hyperscan.error as exc:  # e.g. a CPU without SSSE3
        raise RuntimeError(f"hyperscan: {exc}") from None

    def offsets(data: bytes) -> list[int]:
        found: list[int] = []
        database.scan(data, match_event_handler=lambda _i, _s, end, _f, _c: found.append(end - 1))
        return found

    return offsets


def candidate_gate(line: bytes) -> Callable[[str], bool] | None:
    """For `scrub`, a faster `maybe_pii` for the strings of one line: whether the string
    holds one of the line's marks (each mark the bytes pre-filter finds, as text). None for
    a line with a backslash, whose strings are not their bytes.

    A string `maybe_pii` lets through holds a mark; marks never span a `"` (it is no byte of
    any), so that mark lies inside the string's bytes in the line, where the pre-filter found
    it or one overlapping it (in the same string). The exact patterns still decide: the gate
    only has to let through every string `maybe_pii` would (it costs a substring test or
    two, not a regex, an encode and a translate per string)."""
    if b"\\" in line:
        return None
    found = [b"@"] if b"@" in line else []
    found += [line[p : p + 3] for p in _all(line, b"%") if line[p + 1 : p + 3] in _PERCENT]
    found += [line[p : p + 2] for p in _all(line, b"+") if line[p + 1 : p + 2] in _DIGIT]
    skeleton = line.translate(_SKELETON)
    for mark in _SKELETON_MARKS:
        found += [line[pos : pos + len(mark)] for pos in _all(skeleton, mark)]
    marks = {mark.decode() for mark in found}  # ASCII: `@`, `%`, `+`, digits, separators
    return lambda text: any(mark in text for mark in marks)


def maybe_pii(text: str) -> bool:
    """The pre-filter for one decoded string: False means no exact pattern can match it."""
    if len(text) < 6 or _GATE.search(text) is None:  # a@b.co; phones and cards are longer
        return False
    data = text.encode("utf-8", "surrogatepass")
    if b"@" in data:
        return True
    if b"%" in data and (b"%40" in data or b"%2B" in data or b"%2b" in data):
        return True
    if b"+" in data and _PLUS_DIGIT.search(data) is not None:
        return True
    skeleton = data.translate(_SKELETON)
    return _SKELETON_MARKS[0] in skeleton or _SKELETON_MARKS[1] in skeleton


_PLUS_DIGIT: Final = re.compile(rb"\+[0-9]")
# What every mark below holds (`@`, `%`, `+`, or three digits in a row): one C-level search
# turns most strings of a flagged record away before the bytes tests
_GATE: Final = re.compile(r"[@%+]|[0-9]{3}")


def _all(data: bytes, mark: bytes) -> list[int]:
    found: list[int] = []
    pos = data.find(mark)
    while pos >= 0:
        found.append(pos)
        pos = data.find(mark, pos + len(mark))
    return found


def luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _classify(found: re.Match[str]) -> str | None:
    """The kind of PII a match is, or None (a number that fails the card checks)."""
    kind = found.lastgroup
    if kind == "email":
        return "email"
    digits = "".join(c for c in re.sub("%2[0-9A-Fa-f]", " ", found[0]) if c.isdigit())
    if kind == "card":  # issuers start 2-6; a run of one digit passes Luhn but is no card
        if digits[0] in "23456" and len(set(digits)) > 1 and luhn(digits):
            return "card"
        return None
    return "phone" if 7 <= len(digits) <= 15 else None


def find_pii(text: str) -> list[str]:
    """The kinds of PII in a string, one entry per occurrence."""
    exact = _exact_for(text)
    if exact is None:
        return []
    kinds = (_classify(m) for m in exact.finditer(text))
    return [k for k in kinds if k is not None]


def redact_text(text: str) -> tuple[str, list[str]]:
    """The string with each occurrence replaced by its placeholder, and the kinds replaced."""
    kinds: list[str] = []

    def replace(found: re.Match[str]) -> str:
        kind = _classify(found)
        if kind is None:
            return found[0]
        kinds.append(kind)
        return PLACEHOLDER[kind]

    exact = _exact_for(text)
    return (text, kinds) if exact is None else (exact.sub(replace, text), kinds)


def scrub(
    value: Any,
    path: str,
    found: list[tuple[str, str]],
    redact: bool,
    gate: Callable[[str], bool] = maybe_pii,
) -> Any:
    """The decoded value with PII replaced (when `redact`); findings appended as (kind, path).

    Only string values are scanned: keys and numbers are left as they are. A string the
    pre-filter (`gate`) clears is kept without building its path (most of a flagged record).
    """
    shape = type(value)
    if shape is str:
        return _scrub_text(value, path, found, redact) if gate(value) else value
    if shape is dict:
        prefix = f"{path}." if path else ""
        clean = {}
        for key, item in value.items():
            shape = type(item)
            if shape is str:
                if gate(item):
                    item = _scrub_text(item, f"{prefix}{key}", found, redact)
            elif shape is dict or shape is list:
                item = scrub(item, f"{prefix}{key}", found, redact, gate)
            clean[key] = item
        return clean
    if shape is list:
        return [scrub(v, f"{path}[]", found, redact, gate) for v in value]
    return value


def _scrub_text(text: str, path: str, found: list[tuple[str, str]], redact: bool) -> str:
    """A string the pre-filter let through, through the exact patterns."""
    if redact:
        text, kinds = redact_text(text)
    else:
        kinds = find_pii(text)
    found.extend((kind, path) for kind in kinds)
    return text
