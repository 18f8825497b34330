"""Miso records as msgspec types: the schema *is* the types.

INTERFACE STUB: the signatures below are the contract other modules code against.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

Kind = Literal["interactions", "products", "users"]

# Returned by RecordValidator.check for a valid record outside the --since/--until window:
# such a record is filtered (counted, not dead-lettered). Compare with `is`.
OUT_OF_WINDOW: Final = "outside the --since/--until time window"


class Rules(msgspec.Struct, frozen=True):
    """Backfill rules on top of the contract's schema (each can be relaxed by a flag)."""

    require_timestamp: bool = True
    require_identity: bool = True  # user_id or anonymous_id
    since: datetime | None = None  # inclusive, tz-aware
    until: datetime | None = None  # exclusive, tz-aware


class RecordValidator:
    """Validates one raw JSON record for the engine: contract schema plus backfill rules."""

    def __init__(self, kind: Kind, rules: Rules) -> None:
        raise NotImplementedError

    def check(self, raw: bytes) -> str | None:
        """None when valid; OUT_OF_WINDOW; else the reason in the user's terms."""
        raise NotImplementedError

    def decode(self, raw: bytes) -> Any:
        """The decoded record (a Struct); raises RecordInvalid(reason)."""
        raise NotImplementedError


class RecordInvalid(ValueError):
    """A record failed validation; str(exc) is the reason in the user's terms."""


def miso_error_lines(kind: Kind, records: Sequence[bytes]) -> list[str]:
    """Server-side validation with Miso's semantics (contract only, no backfill rules)."""
    raise NotImplementedError
