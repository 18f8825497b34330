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
        batch = KINDS[kind].upload_batch
        return Target(kind, operation, "POST", f"/v1/{kind}", b'{"data":[', b"]}", batch)
    if kind == "interactions":  # right to be forgotten: every interaction of these users
        head = b'{"user_ids":['
        return Target(kind, operation, "DELETE", "/v1/interactions", head, b"]}", DELETE_BATCH)
    head = b'{"data":{"%ss":[' % KINDS[kind].id_field.encode()
    return Target(kind, operation, "POST", f"/v1/{kind}/_delete", head, b"]}}", DELETE_BATCH)
