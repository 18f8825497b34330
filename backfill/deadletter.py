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

import contextlib
import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from backfill.batching import Rejected
from backfill.errors import StateUnwritable

RECORD_LIMIT = 64 * 1024  # bytes of the original line kept in an entry


class Entry(msgspec.Struct, omit_defaults=True):
    source: str
    line: int  # 1-based, as editors count
    stage: str
    reason: str
    record: str
    truncated: bool = False


class DeadLetterFile:
    """Opened by `open` once the resume knows which entries to suppress."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        """`shared`: other processes append to the same file (--processes workers), so a
        failed write is never cut back (that could cut their entries); a torn tail is then
        repaired by the next open."""
        self.path = path
        self.shared = shared
        self._fd = -1
        self._suppress: set[tuple[str, int]] = set()
        self._encoder = msgspec.json.Encoder()
        self.written = 0

    def open(self, suppress: set[tuple[str, int]] | None = None) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            _repair_torn_tail(fd)
        except OSError as exc:
            raise _unwritable(self.path, exc) from None
        self._fd = fd
        self._suppress = suppress or set()

    def write(self, source: str, rejected: Iterable[Rejected]) -> None:
        """Appends to the OS; fsync is left to `sync()` at batch boundaries."""
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
            self._append(out)

    def _append(self, data: bytearray) -> None:
        """All of it or none of it: a write cut short (a full disk) is cut back to the last
        whole entry, so the file never holds a torn line."""
        size = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            if not self.shared:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
            raise _unwritable(self.path, exc) from None

    def sync(self) -> None:
        """An fsync: called on the checkpoint thread, never on the event loop."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _unwritable(self.path, exc) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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


def _repair_torn_tail(fd: int) -> None:
    """A crash mid-write leaves half an entry at the end: cut it off (its line is read and
    dead-lettered again, because its batch never reached the checkpoint). A whole last
    entry that only lacks its newline keeps it."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    cut = pos = size
    while pos > 0 and cut == size:
        step = min(pos, 1 << 16)
        pos -= step
        found = os.pread(fd, step, pos).rfind(b"\n")
        cut = pos + found + 1 if found >= 0 else 0 if pos == 0 else size
    try:
        msgspec.json.decode(os.pread(fd, size - cut, cut), type=Entry)
    except msgspec.MsgspecError:
        os.ftruncate(fd, cut)
    else:
        os.write(fd, b"\n")


def _unwritable(path: Path, exc: OSError) -> StateUnwritable:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        why = f"no space left for the dead-letter file {path} ({exc.strerror})"
    else:
        why = f"cannot write the dead-letter file {path} ({exc.strerror or exc})"
    return StateUnwritable(
        f"{why}: nothing is lost; free space and rerun the same command to resume"
    )
