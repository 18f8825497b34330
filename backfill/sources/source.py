"""What a store must provide for its inputs to be read, resumed and sharded: the Source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

CHUNK = 1 << 20  # bytes a source hands over at a time


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Enough to notice a file that changed between two legs of a run, cheaply."""

    size: int
    mtime_ns: int
    head: str
    tail: str


class Source(Protocol):
    """One input as stored bytes, wherever it lives: a local file today, an object in a
    bucket (s3://, gs://) behind the same four members, so that reading, resuming and
    sharding never ask which store a source is in."""

    @property
    def name(self) -> str:
        """As found (a path, or s3://bucket/key): shown in messages and dead letters."""
        ...

    @property
    def key(self) -> str:
        """Its identity in a checkpoint: the same source on every leg (an absolute path)."""
        ...

    @property
    def relative(self) -> str:
        """Its path below the input root it was found under (a glob's fixed directory, a
        directory given, a file's own directory): the same from any mount point, so the
        shard that owns a source never depends on where the inputs were listed from."""
        ...

    def fingerprint(self) -> Fingerprint:
        """Enough to notice a change between legs. Blocking: call it on a thread."""
        ...

    def chunks(self, offset: int) -> AsyncIterator[bytes]:
        """Its stored bytes from `offset` on, in pieces of about CHUNK bytes."""
        ...
