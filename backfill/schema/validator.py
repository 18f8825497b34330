"""The hot path: one raw record checked against the contract and the backfill's rules; Miso's
own 422 lines for the embedded server."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from msgspec import UNSET

from backfill.schema.explain import _explained, _reason
from backfill.schema.formats import (
    _decode_aware_datetime,
    _encode,
    _is_ipv4,
    _is_mixed,
    _leap_second,
)
from backfill.schema.records import _DECODERS
from backfill.schema.rules import (
    MISSING_IDENTITY,
    MISSING_TIMESTAMP,
    OUT_OF_WINDOW,
    Kind,
    RecordInvalid,
    Rules,
)


class RecordValidator:
    """Validates one raw JSON record for the engine: contract schema plus backfill rules."""

    __slots__ = (
        "_decode",
        "_identity",
        "_interactions",
        "_kind",
        "_since",
        "_timestamp",
        "_until",
        "_window",
        "decoded",
    )

    decoded: Any  # the record the last `check` decoded (when it decoded), for the privacy step

    def __init__(self, kind: Kind, rules: Rules) -> None:
        for name, bound in (("since", rules.since), ("until", rules.until)):
            if bound is not None and bound.utcoffset() is None:
                raise ValueError(f"Rules.{name} must be time-zone aware, got {bound.isoformat()}")
        self._kind: Kind = kind
        self._decode = _DECODERS[kind]
        self._interactions = kind == "interactions"
        self._timestamp = rules.require_timestamp
        self._identity = rules.require_identity
        self._window = rules.since is not None or rules.until is not None
        self._since = rules.since or datetime.min.replace(tzinfo=UTC)
        self._until = rules.until or datetime.max.replace(tzinfo=UTC)
        self.decoded = None

    def check(self, raw: bytes) -> str | None:
        """None when valid; OUT_OF_WINDOW; else the reason in the user's terms.

        The hot path: `_context_problem`, `_mixed_key` and `parse_timestamp` are inlined.
        The record decoded is kept in `decoded` (when it returns None or OUT_OF_WINDOW, it is
        this line's), so that the [privacy] step reads the ids from it instead of decoding the
        line a second time (backfill.privacy.transform).
        """
        try:
            if not raw.isascii():
                raw.decode()  # msgspec skips the values of unknown keys without reading them
            record = self.decoded = self._decode(raw)
        except (UnicodeDecodeError, msgspec.MsgspecError, RecursionError):
            return _reason(self._kind, raw)
        if not self._interactions:
            return None
        context = record.context
        if context is not UNSET:
            ip = context.truncated_ip
            if ip is not UNSET and not _is_ipv4(ip):
                return _reason(self._kind, raw)
            custom = context.custom_context
            if custom is not UNSET and list in map(type, custom.values()):
                for value in custom.values():
                    if type(value) is list and len(value) > 1 and _is_mixed(value):
                        return _reason(self._kind, raw)
        text = record.timestamp
        if text is UNSET:
            if self._timestamp:
                return MISSING_TIMESTAMP
            when = None
        else:
            if text[10] not in "Tt" or (text[-1] not in "Zz" and text[-3] != ":"):
                return _reason(self._kind, raw)
            try:
                when = _decode_aware_datetime(_encode(text))
            except msgspec.ValidationError:
                when = _leap_second(text)
                if when is None:
                    return _reason(self._kind, raw)
        if self._identity and not (record.user_id or record.anonymous_id):
            return MISSING_IDENTITY
        if self._window and when is not None and not (self._since <= when < self._until):
            return OUT_OF_WINDOW
        return None

    def decode(self, raw: bytes) -> Any:
        """The decoded record (a Struct); raises RecordInvalid(reason).

        A record outside the time window still decodes: the window filters, it does not reject.
        """
        reason = self.check(raw)
        if reason is not None and reason is not OUT_OF_WINDOW:
            raise RecordInvalid(reason)
        return self._decode(raw)


_CONTRACT_ONLY: Final = Rules(require_timestamp=False, require_identity=False)


def miso_error_lines(kind: Kind, records: Sequence[bytes]) -> list[str]:
    """Server-side validation with Miso's semantics (contract only, no backfill rules).

    One line per bad record, `data.<index>[.<path>] [(<value>)] is invalid. <message>`.
    """
    validator = RecordValidator(kind, _CONTRACT_ONLY)
    lines: list[str] = []
    for index, raw in enumerate(records):
        if validator.check(raw) is not None:
            lines.append(_explained(kind, raw).miso_line(index))
    return lines


_ERROR_INDEX = re.compile(r"data\.(\d+)(?=[. ]|\Z)")


def parse_error_index(line: str) -> int | None:
    """The record index a Miso 422 line names (`data.<index>...`), or None."""
    match = _ERROR_INDEX.match(line)
    return int(match.group(1)) if match else None
