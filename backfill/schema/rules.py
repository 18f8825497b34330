"""The kinds of record, the backfill's rules on top of the contract (each relaxed by a flag),
and the errors a failed record raises."""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

import msgspec

Kind = Literal["interactions", "products", "users"]

# Returned by RecordValidator.check for a valid record outside the --since/--until window:
# such a record is filtered (counted, not dead-lettered). Compare with `is`.
OUT_OF_WINDOW: Final = "outside the --since/--until time window"
MISSING_TIMESTAMP: Final = "missing timestamp (--allow-missing-timestamp relaxes this rule)"
MISSING_IDENTITY: Final = (
    "missing user identity: user_id or anonymous_id is required "
    "(--allow-anonymous relaxes this rule)"
)


class Rules(msgspec.Struct, frozen=True):
    """Backfill rules on top of the contract's schema (each can be relaxed by a flag)."""

    require_timestamp: bool = True
    require_identity: bool = True  # user_id or anonymous_id
    since: datetime | None = None  # inclusive, tz-aware
    until: datetime | None = None  # exclusive, tz-aware


class RecordInvalid(ValueError):
    """A record failed validation; str(exc) is the reason in the user's terms."""


class _FieldError(ValueError):
    """Raised by `__post_init__` hooks; msgspec chains it as the ValidationError's cause.

    It carries what the hook knows and msgspec's path does not: the field below the Struct,
    the user-facing expectation and Miso's message.
    """

    def __init__(self, subpath: tuple[str, ...], expected: str, miso: str) -> None:
        super().__init__(f"expected {expected}")
        self.subpath = subpath
        self.expected = expected
        self.miso = miso
