"""The [privacy] table as settings, and the HMAC key it needs (never a setting itself)."""

from __future__ import annotations

import os
import re
from hashlib import sha256
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from backfill.errors import UsageError

PiiMode = Literal["redact", "dead-letter", "warn", "off"]
IdField = Literal["user_id", "anonymous_id"]
MIN_KEY = 16  # characters: a short key lets anyone hash a list of e-mail addresses and compare


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
        return self._hex(value.encode("utf-8", "surrogatepass"))

    def hash_utf8(self, data: bytes) -> bytes:
        """`hash` of a value given as its UTF-8 bytes, the digest as ASCII bytes (no decode
        and encode around it: the compiled pass's misses)."""
        return self._hex(data).encode()

    def _hex(self, data: bytes) -> str:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def hash_json(self, raw: bytes, limit: int) -> bytes | None:
        """The hash of a JSON string's content (without quotes), None if it is not one; the
        content itself when empty or longer than `limit` (the schema's maximum for the
        field: left for the validator to refuse, as on every other path)."""
        try:
            if b"\\" in raw:  # escapes: the value's own UTF-8 is not these bytes
                value = msgspec.json.decode(b'"%s"' % raw, type=str)
                data = value.encode("utf-8", "surrogatepass")
            else:
                value, data = raw.decode(), raw
        except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if not value or len(value) > limit:  # left for the validator (empty, too long)
            return raw
        return self.hash_utf8(data)

    def fingerprint(self) -> str:
        """Tells two keys apart without revealing either (for the checkpoint's settings: a
        resumed load with another key would send ids that no longer join)."""
        return self.hash("backfill: hash key fingerprint")[:16]

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


def implementation(variable: str, choices: tuple[str, ...], name: str | None = None) -> str:
    """Which implementation of a part to use: `name`, else $`variable`, else "" (the
    default: the compiled one where it is there); a value not among `choices` is a usage
    error (exit 2), before anything is read or sent."""
    name = name or os.environ.get(variable) or ""
    if name not in ("", *choices):
        raise UsageError(f"${variable} is {name!r}: choose one of {', '.join(choices)}")
    return name
