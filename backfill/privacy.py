"""The [privacy] table: pseudonymized ids, truncated IPs and PII scrubbing, on the way to the API.

One more BlockTransform, after mapping (lines are Miso JSON records by then) and before
validation, so that whatever is validated, sent, dead-lettered or previewed is already clean:

    read_blocks -> [MappingTransform | IdLines] -> PrivacyTransform -> validation, batching

Most records carry no PII, so a block is searched *as bytes* first: only lines where a cheap
candidate pattern matches (`@`, `%40`, long digit runs shaped like a phone or a card) are
decoded, scanned string by string, and encoded again. Ids and IPs are in nearly every line:
msgspec decodes just those fields (skipping the rest unbuilt) and the line's bytes get a
replace of `"user_id":"<value>"`; only a value spelled another way (escapes) costs a full
decode and encode of its record.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from operator import ne
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from backfill.errors import UsageError
from backfill.schema import Kind
from backfill.sources import PREVIEW, Block, Problem

PiiMode = Literal["redact", "dead-letter", "warn", "off"]
IdField = Literal["user_id", "anonymous_id"]
MIN_KEY = 16  # characters: a short key lets anyone hash a list of e-mail addresses and compare
HASHABLE: Final[dict[str, frozenset[str]]] = {
    "interactions": frozenset({"user_id", "anonymous_id"}),
    "users": frozenset({"user_id"}),
    "products": frozenset(),
}
# Fields whose value is an identity: a placeholder there would merge every user into one.
ID_PATHS: Final = frozenset(
    {"user_id", "anonymous_id", "product_id", "product_ids[]", "product_group_ids[]"}
)
PLACEHOLDER: Final = {"email": "[email]", "phone": "[phone]", "card": "[card]"}
# the contract's limits: a longer id stays as it is, for the validator to dead-letter as before
MAX_ID: Final = {"user_id": 512, "anonymous_id": 1024}
CACHE_SIZE: Final = 1 << 16  # hashed ids remembered (a user's events come in runs)


class PrivacySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The [privacy] table of the config file. The key is never a setting, only where it is."""

    hash_ids: list[IdField] = []
    hash_key_env: str = "MISO_HASH_KEY"
    hash_key_file: str | None = None
    truncate_ip: bool = False
    pii: PiiMode = "off"

    @property
    def active(self) -> bool:
        return bool(self.hash_ids) or self.truncate_ip or self.pii != "off"


def parse_privacy(table: dict[str, Any], where: str = "") -> PrivacySettings:
    """The [privacy] table decoded, or a UsageError naming the bad entry."""
    try:
        return msgspec.convert(table, PrivacySettings, str_keys=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
    head, sep, path = message.partition(" - at `$.")
    what = f"privacy.{path.rstrip('`')}: {head}" if sep else f"privacy: {message}"
    unknown = re.search(r"unknown field `([^`]*)`", message)
    if unknown:
        known = ", ".join(PrivacySettings.__struct_fields__)
        what = f"privacy.{unknown[1]}: no such setting (known: {known})"
        if "key" in unknown[1]:
            what += "; the hash key is never written in a config: set MISO_HASH_KEY"
    raise UsageError(f"{where}: {what}" if where else what)


_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


class HashKey:
    """The HMAC key. Like the API key's Secret, no repr, str or error message ever shows it."""

    __slots__ = ("_inner", "_key", "_outer")

    def __init__(self, value: str) -> None:
        self._key = value.encode()
        # HMAC (RFC 2104) with both padded-key states computed once: a new id then costs two
        # state copies instead of hmac.new's setup (a third of the time)
        block = self._key if len(self._key) <= 64 else sha256(self._key).digest()
        block = block.ljust(64, b"\0")
        self._inner = sha256(block.translate(_IPAD))
        self._outer = sha256(block.translate(_OPAD))

    def hash(self, value: str) -> str:
        """hex(HMAC-SHA256(key, value)), lower case: the same id on every run and shard."""
        inner = self._inner.copy()
        inner.update(value.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def hash_json(self, raw: bytes, limit: int = 512) -> bytes | None:
        """The hash of a JSON string's content (without quotes), None if it is not one."""
        try:
            value = msgspec.json.decode(b'"%s"' % raw, type=str) if b"\\" in raw else raw.decode()
        except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if not value or len(value) > limit:  # left for the validator (empty, too long)
            return raw
        return self.hash(value).encode()

    def redact(self, text: str) -> str:
        key = self._key.decode()
        return text.replace(key, "***") if key else text

    def __repr__(self) -> str:
        return "HashKey('***')"

    __str__ = __repr__


def load_hash_key(
    settings: PrivacySettings, environ: dict[str, str] | None = None
) -> HashKey | None:
    """The key (file first, then the environment); None when no id is to be hashed.

    Hashing asked for and no key is a usage error before anything is sent: sending the raw
    ids instead would be exactly the leak the table exists to prevent.
    """
    if not settings.hash_ids:
        return None
    env = os.environ if environ is None else environ
    if settings.hash_key_file:
        try:
            lines = Path(settings.hash_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            raise UsageError(
                f"[privacy] hash_ids needs a key: cannot read {settings.hash_key_file} "
                "(hash_key_file)"
            ) from None
        key, source = (lines[0].strip() if lines else ""), f"the file {settings.hash_key_file}"
    else:
        key, source = env.get(settings.hash_key_env, "").strip(), settings.hash_key_env
    if not key:
        raise UsageError(
            f"[privacy] hash_ids needs a key and {source} holds none: set the environment "
            f"variable {settings.hash_key_env} (or hash_key_file) to a secret of at least "
            f"{MIN_KEY} characters, e.g. `openssl rand -hex 32`; keep it: the same key gives "
            "the same ids on every run"
        )
    if len(key) < MIN_KEY:
        raise UsageError(
            f"the hash key in {source} is {len(key)} characters; use at least {MIN_KEY} "
            "(e.g. `openssl rand -hex 32`): a short key can be guessed from the hashed ids"
        )
    return HashKey(key)


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
_EXACT: Final = re.compile(
    rf"(?P<email>(?<![A-Za-z0-9._%+\-]){_EMAIL}(?![A-Za-z0-9\-]))"
    rf"|(?P<plus>(?<![A-Za-z0-9_]){_PLUS}{_END})"
    rf"|(?P<card>{_START}{_CARD}{_END})"
    rf"|(?P<phone>{_START}(?:{_NANP}|{_NATIONAL}){_END})",
    re.ASCII,
)
# The pre-filter works on a skeleton of the bytes: digits become 0 and the separators 1 (the
# `%` of %20 too, so "555%202671" reads 000100000). Every exact match above holds `@`, `%40`,
# `%2B`, a `\u00..` escape, `+digit`, 13 digits in a row, or 3 digits, a separator and 4
# digits; timestamps, IPs, prices and hex ids hold none of them. One-byte marks are looked
# for first (memchr), so a block without `\`, `%` or `+` costs a translate and two finds.
_SKELETON: Final = bytes.maketrans(b"0123456789 -.%+", b"0000000000\x01\x01\x01\x01\x01")
_SKELETON_MARKS: Final = (b"0" * 13, b"000\x010000")
# a regex that starts with one literal byte scans at memchr speed; an alternation does not
_MARKS: Final = {
    b"\\": re.compile(rb"\\u00"),
    b"%": re.compile(rb"%(?:40|2[Bb])"),
    b"+": re.compile(rb"\+[0-9]"),
}


def candidate_offsets(data: bytes) -> list[int]:
    """Offsets in `data` (a line, or lines joined by newlines) where PII may be; [] for
    none, the common case, which costs a few C-level scans of the bytes."""
    hits = _all(data, b"@")
    for char, mark in _MARKS.items():
        if char in data:
            hits += [found.start() for found in mark.finditer(data)]
    skeleton = data.translate(_SKELETON)
    return hits + [pos for mark in _SKELETON_MARKS for pos in _all(skeleton, mark)]


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
    kinds = (_classify(m) for m in _EXACT.finditer(text))
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

    return _EXACT.sub(replace, text), kinds


def scrub(value: Any, path: str, found: list[tuple[str, str]], redact: bool) -> Any:
    """The decoded value with PII replaced (when `redact`); findings appended as (kind, path).

    Only string values are scanned: keys and numbers are left as they are.
    """
    if type(value) is str:
        if redact:
            text, kinds = redact_text(value)
        else:
            text, kinds = value, find_pii(value)
        found.extend((kind, path) for kind in kinds)
        return text
    if type(value) is dict:
        prefix = f"{path}." if path else ""
        return {k: scrub(v, f"{prefix}{k}", found, redact) for k, v in value.items()}
    if type(value) is list:
        return [scrub(v, f"{path}[]", found, redact) for v in value]
    return value


@dataclass(slots=True)
class PrivacyCounts:
    """What the step did, for the run's report (this leg's lines only)."""

    ids_hashed: int = 0
    ips_truncated: int = 0
    records_redacted: int = 0
    records_dead_lettered: int = 0
    findings: Counter[str] = field(default_factory=Counter)  # "email@search.keywords": n

    def report(self) -> dict[str, Any]:
        return {
            "ids_hashed": self.ids_hashed,
            "ips_truncated": self.ips_truncated,
            "pii_records_redacted": self.records_redacted,
            "pii_records_dead_lettered": self.records_dead_lettered,
            "pii_findings": dict(sorted(self.findings.items())),
        }


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
        self._cache = _Rewritten(self._rewrite_new)  # values repeat: a user's events, an IP
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


class _Rewritten(dict[bytes, bytes]):
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


class _Context(msgspec.Struct):
    truncated_ip: str | None = None


class _Fields(msgspec.Struct):
    """The only fields the rewrite needs: msgspec skips the rest of the record unbuilt (a
    value of another type is a ValidationError, and the whole record takes the slow path)."""

    user_id: str | None = None
    anonymous_id: str | None = None
    context: _Context | None = None


class _Swaps(dict[str, tuple[bytes, bytes, bytes | None]]):
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
        compact = b'"%s":%s' % (name.encode(), _encode(value))
        spaced = compact.replace(b":", b": ", 1)
        found = self[value] = (compact, spaced, None if new == value else _encode_pair(name, new))
        return found


def _encode_pair(name: str, value: str) -> bytes:
    return b'"%s":%s' % (name.encode(), _encode(value))


def _swap(line: bytes, swap: tuple[bytes, bytes, bytes | None]) -> bytes:
    """The line with `"field":value` replaced; _Unusual when it is spelled another way."""
    compact, spaced, replacement = swap
    if replacement is None:
        return line
    if compact in line:
        return line.replace(compact, replacement)
    if spaced in line:
        return line.replace(spaced, replacement)
    raise _Unusual


class _Unusual(Exception):
    """A value spelled with escapes (or otherwise unlike its re-encoding): the regex path."""


def _freeze(block: Block) -> None:
    """Block.freeze_lengths, with the lengths taken in one C-level pass (the hot path)."""
    if block.raw_lengths is None:
        lengths = list(map(len, block.lines))
        for index, problem in block.problems.items():
            lengths[index - block.first] = problem.length
        block.raw_lengths = lengths
    block.freeze_lengths()


def build_privacy(
    settings: PrivacySettings | None,
    kind: Kind,
    operation: Literal["upload", "delete"] = "upload",
    environ: dict[str, str] | None = None,
) -> PrivacyTransform | None:
    """The step for a run, None when it has nothing to do; a missing key raises UsageError."""
    if settings is None or not settings.active:
        return None
    transform = PrivacyTransform(settings, load_hash_key(settings, environ), kind, operation)
    return transform if transform.does_something else None


class PrivacyTransform:
    """A BlockTransform: rewrites ids and IPs in place, scans candidate lines for PII."""

    def __init__(
        self,
        settings: PrivacySettings,
        key: HashKey | None,
        kind: Kind,
        operation: Literal["upload", "delete"] = "upload",
    ) -> None:
        upload = operation == "upload"
        fields = [f for f in settings.hash_ids if f in HASHABLE[kind]]
        if not upload:  # a delete's ids are user ids (delete users, delete interactions)
            fields = ["user_id"] if "user_id" in fields else []
        if fields and key is None:
            raise UsageError("[privacy] hash_ids needs a key (see load_hash_key)")
        self.key = key
        self.delete = not upload
        self.fields = fields
        self.pii: PiiMode = settings.pii if upload else "off"
        self.truncate = settings.truncate_ip and upload and kind == "interactions"
        self.counts = PrivacyCounts()
        self._ids = KeyRewriter(fields, self._hash_value) if fields and upload else None
        self._ips = KeyRewriter(["truncated_ip"], self._truncate_value)
        self._decode_fields = msgspec.json.Decoder(_Fields).decode
        pseudonym = key.hash if key is not None else str
        self._user_swaps = _Swaps("user_id", pseudonym)
        self._anonymous_swaps = _Swaps("anonymous_id", pseudonym)
        self._ip_swaps = _Swaps("truncated_ip", truncate_ip)
        self._hash_user = "user_id" in fields and upload
        self._hash_anonymous = "anonymous_id" in fields and upload

    @property
    def does_something(self) -> bool:
        return bool(self.fields) or self.truncate or self.pii != "off"

    async def blocks(self, path: Path, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        async for block in blocks:
            self.apply(block)
            yield block

    def apply(self, block: Block) -> None:
        """Rewrites the block in place (lines, raw_lengths, problems)."""
        if self.delete:
            self._hash_bare_ids(block)
            return
        if block.problems and (self._ids is not None or self.pii in ("redact", "dead-letter")):
            self._clean_problems(block)
        slots = self._candidates(b"\n".join(block.lines)) if self.pii != "off" else []
        if self._ids is not None or self.truncate:
            self._rewrite(block)
        for slot in slots:
            self._scan(block, slot)

    # -- ids and IPs ----------------------------------------------------------------------

    def _rewrite(self, block: Block) -> None:
        """Ids and IPs, line by line: one msgspec decode of just those fields, then a bytes
        replace of `"field":value`; a value spelled another way (escapes) is re-encoded."""
        _freeze(block)
        lines, decode = block.lines, self._decode_fields
        hash_user, hash_anonymous, truncate = self._hash_user, self._hash_anonymous, self.truncate
        users, visitors, ips = self._user_swaps, self._anonymous_swaps, self._ip_swaps
        hashed = truncated = 0
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                found = decode(line)
                new = line
                value = found.user_id
                if value and hash_user and len(value) <= 512:
                    new = _swap(new, users[value])
                    hashed += 1
                value = found.anonymous_id
                if value and hash_anonymous and len(value) <= 1024:
                    new = _swap(new, visitors[value])
                    hashed += 1
                context = found.context
                if truncate and context is not None and context.truncated_ip is not None:
                    swap = ips[context.truncated_ip]
                    new = _swap(new, swap)
                    truncated += swap[2] is not None
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, _Unusual):
                new = self._by_record(line)
            if new is not line:
                lines[i] = new
        self.counts.ids_hashed += hashed
        self.counts.ips_truncated += truncated

    def _by_record(self, line: bytes) -> bytes:
        """The whole record decoded, its top-level ids and context IP rewritten, encoded
        again; a line that is not JSON (a dead letter to be) gets the regex, best effort."""
        try:
            record = _decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return self._by_regex(line)
        if type(record) is not dict:
            return line
        changed = 0
        for name in self.fields:
            value = record.get(name)
            if type(value) is str and 0 < len(value) <= MAX_ID[name]:
                record[name] = self._user_swaps.compute(value)
                self.counts.ids_hashed += 1
                changed += 1
        context = record.get("context")
        ip = context.get("truncated_ip") if self.truncate and type(context) is dict else None
        if type(ip) is str and (short := truncate_ip(ip)) != ip:
            context["truncated_ip"] = short  # type: ignore[index]
            self.counts.ips_truncated += 1
            changed += 1
        return _encode(record) if changed else line

    def _by_regex(self, line: bytes) -> bytes:
        if self._ids is not None:
            line, n = self._ids(line)
            self.counts.ids_hashed += n
        if self.truncate:
            line, n = self._ips(line)
            self.counts.ips_truncated += n
        return line

    def _hash_value(self, raw: bytes) -> bytes | None:
        assert self.key is not None
        hashed = self.key.hash_json(raw)
        return None if hashed == raw else hashed

    def _truncate_value(self, raw: bytes) -> bytes | None:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return None
        short = truncate_ip(text)
        return None if short == text else short.encode()

    def _hash_bare_ids(self, block: Block) -> None:
        """Delete ids, as IdLines leaves them (JSON strings): hashed so they hit the records
        that were loaded hashed."""
        if self.key is None:
            return
        _freeze(block)
        lines = block.lines
        for i, line in enumerate(lines):
            if len(line) >= 2 and line[0] == 34 and line[-1] == 34:  # '"'
                hashed = self.key.hash_json(line[1:-1])
                if hashed is not None and hashed != line[1:-1]:
                    lines[i] = b'"%s"' % hashed
                    self.counts.ids_hashed += 1

    # -- PII ------------------------------------------------------------------------------

    @staticmethod
    def _candidates(joined: bytes) -> list[int]:
        """Slots of the lines where the bytes pre-filter matches (a superset of PII)."""
        slots: set[int] = set()
        line = previous = 0
        for pos in sorted(candidate_offsets(joined)):
            line += joined.count(b"\n", previous, pos)
            previous = pos
            slots.add(line)
        return sorted(slots)

    def _scan(self, block: Block, slot: int) -> None:
        raw = block.lines[slot]
        redact = self.pii != "warn"
        found: list[tuple[str, str]] = []
        try:
            clean = scrub(_decode(raw), "", found, redact)
        except (msgspec.DecodeError, UnicodeDecodeError):  # a dead letter to be: keep PII out
            text, kinds = redact_text(raw.decode("utf-8", "surrogateescape"))
            found = [(kind, "(malformed line)") for kind in kinds]
            clean = None
            if kinds and redact:
                _freeze(block)
                block.lines[slot] = text.encode("utf-8", "surrogateescape")
        if not found:
            return
        self.counts.findings.update(f"{kind}@{path}" for kind, path in found)
        if self.pii == "warn" or clean is None:
            return
        _freeze(block)
        assert block.raw_lengths is not None
        where = ", ".join(sorted({f"{kind} in {path}" for kind, path in found}))
        in_id = sorted({path for _, path in found if path in ID_PATHS})
        if self.pii == "dead-letter" or in_id:
            reason = (
                f"personal data in an id ({where}): an id cannot be redacted without merging "
                f"records; hash it ([privacy] hash_ids) or map it away"
                if self.pii == "redact"
                else f'personal data ({where}); [privacy] pii = "dead-letter" keeps it from Miso'
            )
            preview = _encode(clean)[:PREVIEW]
            block.problems[block.first + slot] = Problem(reason, block.raw_lengths[slot], preview)
            block.lines[slot] = b""
            self.counts.records_dead_lettered += 1
            return
        block.lines[slot] = _encode(clean)
        self.counts.records_redacted += 1

    def _clean_problems(self, block: Block) -> None:
        """Lines already refused upstream go to the dead-letter file as they were read: hash
        their ids and redact their PII there too (best effort: they are not valid JSON)."""
        for index, problem in block.problems.items():
            raw = problem.raw
            if not raw:
                continue
            if self._ids is not None:
                raw = self._ids(raw)[0]  # not counted: these lines are never sent
            if self.pii in ("redact", "dead-letter") and candidate_offsets(raw):
                text, _ = redact_text(raw.decode("utf-8", "surrogateescape"))
                raw = text.encode("utf-8", "surrogateescape")
            if raw is not problem.raw:
                block.problems[index] = problem._replace(raw=raw)
