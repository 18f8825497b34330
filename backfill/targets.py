"""What a load sends where: the endpoint, the method and the body envelope of each operation.

Uploads wrap records as `{"data": [...]}`; deletes wrap ids the way each delete endpoint of
the contract wants them. Everything else (batching, checkpoint, retries, dead letters) is
the same engine, so a delete is as resumable and as carefully accounted for as an upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from backfill.schema import Kind
from backfill.sources import Block, Problem

Operation = Literal["upload", "delete"]
ID_FIELD: dict[str, str] = {"products": "product_id", "users": "user_id", "interactions": "user_id"}
MAX_ID = 512


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    operation: Operation
    method: str
    path: str
    head: bytes
    tail: bytes
    default_batch: int

    def body(self, records: list[bytes]) -> bytes:
        return b"".join((self.head, b",".join(records), self.tail))

    @property
    def envelope(self) -> int:
        return len(self.head) + len(self.tail)

    @property
    def name(self) -> str:
        """How the checkpoint tells loads apart ("interactions", "delete products", ...)."""
        return self.kind if self.operation == "upload" else f"delete {self.kind}"


def target_for(kind: Kind, operation: Operation = "upload") -> Target:
    if operation == "upload":
        batch = 10_000 if kind == "interactions" else 100
        return Target(kind, operation, "POST", f"/v1/{kind}", b'{"data":[', b"]}", batch)
    if kind == "interactions":  # right to be forgotten: every interaction of these users
        return Target(kind, operation, "DELETE", "/v1/interactions", b'{"user_ids":[', b"]}", 100)
    field = f"{ID_FIELD[kind]}s"
    head = b'{"data":{"%s":[' % field.encode()
    return Target(kind, operation, "POST", f"/v1/{kind}/_delete", head, b"]}}", 100)


def id_check(kind: Kind) -> Callable[[bytes], str | None]:
    """Validates one id (a JSON string, as IdLines produces) by the contract's id rules."""
    what = ID_FIELD[kind]
    decode = msgspec.json.Decoder(str).decode

    def check(raw: bytes) -> str | None:
        try:
            value = decode(raw)
        except msgspec.MsgspecError:
            return f"{what}: not a valid id"
        if not value or len(value) > MAX_ID:
            return f"{what}: must be 1 to {MAX_ID} characters, got {len(value)}"
        if value.startswith("_"):
            return f"{what}: must not start with '_', got {value!r}"
        if kind == "products" and "," in value:
            return f"{what}: must not contain ',', got {value!r}"
        return None

    return check


class IdLines:
    """A BlockTransform for id files: one id per line, or JSON lines holding the id field."""

    def __init__(self, kind: Kind) -> None:
        self.field = ID_FIELD[kind]
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

    async def blocks(self, path: Path, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        async for block in blocks:
            block.freeze_lengths()
            for i, line in enumerate(block.lines):
                if not line.strip():
                    continue
                mapped = self.to_json(line)
                if isinstance(mapped, bytes):
                    block.lines[i] = mapped
                else:
                    block.problems[block.first + i] = Problem(mapped, len(line), line)
                    block.lines[i] = b""
            yield block
