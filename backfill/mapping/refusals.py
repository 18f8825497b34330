"""Why a record does not become a Miso record: left out on purpose, or refused with a reason.

The compiled mapping raises these on the rare records they concern, so that the common path
pays nothing for them; the transform turns each into the block's Problem for that line.
"""

from __future__ import annotations

from typing import Final

import msgspec


class Dropped(Exception):
    """The record is left out on purpose (a drop rule, or an unmapped value with "drop")."""


class RecordRefused(Exception):
    """The record cannot be mapped; str() is the reason for its dead-letter entry."""


# What a rule may still raise on a value nobody foresaw (a recursion on a deeply nested
# object, a number beyond a limit): the record is refused with the reason, never the run.
RULE_FAILURES: Final = (
    ArithmeticError,
    LookupError,
    RecursionError,
    TypeError,
    ValueError,
    msgspec.MsgspecError,
)


def rule_failure(exc: BaseException) -> str:
    """The dead-letter reason of one of RULE_FAILURES."""
    if isinstance(exc, RecursionError):
        return "cannot map the record: nested too deeply"
    detail = str(exc) or "no detail"
    detail = detail if len(detail) <= 200 else detail[:197] + "..."
    return f"cannot map the record: {type(exc).__name__}: {detail}"
