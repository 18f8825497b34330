"""What a load sends where: the endpoint, the method and the body envelope of each operation.

Uploads wrap records as `{"data": [...]}`; deletes wrap ids the way each delete endpoint of
the contract wants them. Everything else (batching, checkpoint, retries, dead letters) is
the same engine, so a delete is as resumable and as carefully accounted for as an upload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from backfill.schema import DELETE_BATCH, KINDS, Kind

Operation = Literal["upload", "delete"]


@dataclass(frozen=True, slots=True)
class Target:
    kind: Kind
    operation: Operation
    method: str
    path: str
    head: bytes
    tail: bytes
    default_batch: int  # records (or ids) per request unless --batch-size says otherwise

    def body(self, records: list[bytes]) -> bytes:
        """One copy of the records' bytes (a join of the join would copy them twice)."""
        if not records:
            return self.head + self.tail
        parts = records.copy()  # pointers only
        parts[0] = self.head + parts[0]
        parts[-1] = parts[-1] + self.tail
        return b",".join(parts)

    @property
    def envelope(self) -> int:
        return len(self.head) + len(self.tail)

    @property
    def name(self) -> str:
        """How the checkpoint tells loads apart ("interactions", "delete products", ...)."""
        return self.kind if self.operation == "upload" else f"delete {self.kind}"


def target_for(kind: Kind, operation: Operation = "upload") -> Target:
    if operation == "upload":
        batch = KINDS[kind].upload_batch
        return Target(kind, operation, "POST", f"/v1/{kind}", b'{"data":[', b"]}", batch)
    if kind == "interactions":  # right to be forgotten: every interaction of these users
        head = b'{"user_ids":['
        return Target(kind, operation, "DELETE", "/v1/interactions", head, b"]}", DELETE_BATCH)
    head = b'{"data":{"%ss":[' % KINDS[kind].id_field.encode()
    return Target(kind, operation, "POST", f"/v1/{kind}/_delete", head, b"]}}", DELETE_BATCH)
