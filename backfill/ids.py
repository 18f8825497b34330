"""Id files for deletes: one id per line, or JSON lines holding the id field.

A delete reads ids the way an upload reads records: IdLines turns each line into the id as a
JSON string (the transform between reading and validation), and id_check validates it by the
contract's id rules, so that deletes go through the same batches, checkpoint and dead letters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import msgspec

from backfill.schema import KINDS, MAX_ID, Kind
from backfill.sources import Block, Source


def id_check(kind: Kind, show_values: bool = True) -> Callable[[bytes], str | None]:
    """Validates one id (a JSON string, as IdLines produces) by the contract's id rules.

    A reason quotes the value unless `show_values` is off: raw user ids that the [privacy]
    table hashes are personal data, never printed (the line number says which one)."""
    what = KINDS[kind].id_field
    decode = msgspec.json.Decoder(str).decode

    def got(value: str) -> str:
        return f", got {value!r}" if show_values else ""

    def check(raw: bytes) -> str | None:
        try:
            value = decode(raw)
        except msgspec.MsgspecError:
            return f"{what}: not a valid id"
        if not value or len(value) > MAX_ID:
            return f"{what}: must be 1 to {MAX_ID} characters, got {len(value)}"
        if value.startswith("_"):
            return f"{what}: must not start with '_'{got(value)}"
        if kind == "products" and "," in value:
            return f"{what}: must not contain ','{got(value)}"
        return None

    return check


class IdLines:
    """A BlockTransform for id files: one id per line, or JSON lines holding the id field."""

    def __init__(self, kind: Kind) -> None:
        self.field = KINDS[kind].id_field
        self._encode = msgspec.json.Encoder().encode
        self._object = msgspec.json.Decoder(dict[str, object]).decode

    def to_json(self, line: bytes) -> bytes | str:
        """The id as a JSON string, or the reason it cannot be one."""
        text = line.strip()
        if text.startswith(b"{"):
            try:
                value = self._object(text).get(self.field)
            except msgspec.MsgspecError as exc:
                return f"malformed JSON: {exc}"
            if not isinstance(value, str):
                return f"{self.field}: missing or not a string"
            return self._encode(value)
        try:
            return self._encode(text.decode())
        except UnicodeDecodeError:
            return "invalid UTF-8 in the id"

    async def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        async for block in blocks:
            for i, line in enumerate(block.lines):
                if not line.strip():
                    continue
                mapped = self.to_json(line)
                if isinstance(mapped, bytes):
                    block.replace(i, mapped)
                else:
                    block.reject(i, mapped, line)
            yield block
