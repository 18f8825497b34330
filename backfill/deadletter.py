"""The dead-letter file: every record that will not reach the API, with where it came from.

JSON lines, appended across legs of a run, never truncated:
  {"source": "logs/day1.jsonl.gz", "line": 12, "stage": "client", "reason": "...",
   "record": "<the original line>"}
`stage` is "client" (our validation) or "server" (the API refused it, with its message).
Entries are written before their batch is marked in flight in the checkpoint, so a crash can
never lose one; a resume that reads such lines again (an ambiguous batch, or one caught by a
kill -9 between the two writes) suppresses the entries they already have.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from backfill.batching import Rejected

RECORD_LIMIT = 64 * 1024  # bytes of the original line kept in an entry


class Entry(msgspec.Struct, omit_defaults=True):
    source: str
    line: int  # 1-based, as editors count
    stage: str
    reason: str
    record: str
    truncated: bool = False


class DeadLetterFile:
    def __init__(self, path: Path, suppress: set[tuple[str, int]] | None = None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "ab")
        if _ends_mid_line(fd):
            self._fh.write(b"\n")  # a crash tore the last entry; keep the next one whole
        self._suppress = suppress or set()
        self._encoder = msgspec.json.Encoder()
        self.written = 0

    def write(self, source: str, rejected: Iterable[Rejected]) -> None:
        """Appends and flushes to the OS; fsync is left to `sync()` at batch boundaries."""
        out = bytearray()
        for r in rejected:
            if self._suppress and (source, r.line + 1) in self._suppress:
                continue
            raw = r.raw[:RECORD_LIMIT]
            entry = Entry(
                source,
                r.line + 1,
                r.stage,
                r.reason,
                raw.decode("utf-8", "backslashreplace"),
                len(r.raw) > RECORD_LIMIT,
            )
            out += self._encoder.encode(entry)
            out += b"\n"
            self.written += 1
        if out:
            self._fh.write(out)
            self._fh.flush()

    def sync(self) -> None:
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def entries_in(path: Path, unsettled: Callable[[str, int], bool]) -> set[tuple[str, int]]:
    """(source, line) of existing entries for lines the resume reads again."""
    found: set[tuple[str, int]] = set()
    if not path.exists():
        return found
    decoder = msgspec.json.Decoder(Entry)
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                entry = decoder.decode(raw)
            except msgspec.MsgspecError:
                continue  # a torn last line from a crash: it will be written again
            if unsettled(entry.source, entry.line):
                found.add((entry.source, entry.line))
    return found


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
