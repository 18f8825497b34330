"""A plain local file read as it grows: complete lines only, never its unfinished last line.

`read_blocks` (reader.py) reads a file that is finished: at its end a last line without a
newline is a line like any other. A followed file's end is only "no more bytes yet": the
writer may be half-way through a line, so the bytes after the last newline stay unread
(they are not even consumed: the checkpoint's offset stops before them) until their newline
arrives. `Tail.blocks` yields a block per read of new complete lines and an empty block
(a *heartbeat*) whenever it has caught up, so that its reader can look at other files, flush
a lingering batch, or wait; it never sleeps itself and owns no task.

Polling (fstat, then pread) is the mechanism, not inotify: it is portable (macOS, network
and container filesystems where inotify events never come), it needs no dependency, and a
poll every 0.25 s costs one fstat per followed file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from pathlib import Path

from backfill.sources.block import PREVIEW, Block, Problem
from backfill.sources.reader import BOM
from backfill.sources.source import CHUNK

SMALL_READ = 64 * 1024  # reads up to this size run on the event loop (a page cache copy)


class Tail:
    """One followed file from a position known to start a line (a resume's offset).

    `offset` is where the next unread line starts; `size` what the last look saw;
    `replaced` says why the file can no longer be followed (truncated, replaced), if so.
    """

    def __init__(
        self, path: Path, line: int, offset: int, *, max_line_bytes: int = 1 << 20
    ) -> None:
        self.path = path
        self.line, self.offset = line, offset
        self.size = offset
        self.replaced: str | None = None
        self.caught_up = False  # the last block yielded was a heartbeat
        self.mtime = 0.0  # of the last look (time.time() scale)
        self._max = max_line_bytes
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._carry = b""  # bytes after the last newline read: an unfinished line
        self._long = 0  # > 0 while skipping an over-long line: its bytes so far
        self._head = b""  # the over-long line's start, for its dead letter

    @property
    def unread(self) -> int:
        """Bytes appended and not yet delivered as lines (the unfinished line included)."""
        return max(0, self.size - self.offset)

    @property
    def inode(self) -> int:
        return self._inode[1] if self._inode else 0

    @property
    def waiting_for_newline(self) -> bool:
        return bool(self._carry) or self._long > 0

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY)
        st = os.fstat(fd)
        self._fd, self._inode, self.size = fd, (st.st_dev, st.st_ino), st.st_size
        self.mtime = st.st_mtime

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def look(self) -> int:
        """Bytes available past what was read; sets `replaced` on truncation or a new file
        under the same name (rename rotation, copytruncate)."""
        assert self._fd is not None
        st = os.fstat(self._fd)
        size, self.mtime = st.st_size, st.st_mtime
        read_to = self.offset + len(self._carry) + self._long
        if size < read_to:
            self.replaced = f"truncated (now {size:,} bytes, {read_to:,} had been read)"
            return 0
        self.size = size
        if size == read_to:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return 0  # moved away or deleted: what was written is read; nothing more comes
            if (st.st_dev, st.st_ino) != self._inode:
                self.replaced = "replaced by another file under the same name"
        return size - read_to

    async def blocks(self) -> AsyncGenerator[Block, None]:
        """Blocks of the complete lines appended since the last look, a heartbeat (an empty
        block) each time there is nothing more for now; endless: the caller closes it."""
        while True:
            available = self.look() if self.replaced is None else 0
            if not available:
                self.caught_up = True
                yield Block([], self.line, self.offset, 0)
                continue
            data = await self._read(min(available, CHUNK))
            block = self._lines(data)
            if block is not None:
                self.caught_up = False
                yield block

    async def _read(self, n: int) -> bytes:
        assert self._fd is not None
        at = self.offset + len(self._carry) + self._long
        if n <= SMALL_READ:
            return os.pread(self._fd, n, at)
        return await asyncio.to_thread(os.pread, self._fd, n, at)

    def _lines(self, data: bytes) -> Block | None:
        """The complete lines of carry + data as a block (None if no newline yet)."""
        problems: dict[int, Problem] = {}
        skipped = 0
        if self._long:
            cut = data.find(b"\n")
            if cut < 0:
                self._long += len(data)
                return None
            skipped = self._long + cut
            problems[self.line] = Problem(self._too_long(), skipped, self._head)
            data, self._long = data[cut:], 0  # data[0] is the newline ending that line
        chunk = self._carry + data  # after an over-long line: b"" + "\n...", its slot b""
        lines = chunk.split(b"\n")
        self._carry = lines.pop()
        for i, text in enumerate(lines):
            if len(text) > self._max:
                problems[self.line + i] = Problem(self._too_long(), len(text), text[:PREVIEW])
                lines[i] = b""
        consumed = len(chunk) - len(self._carry) + skipped
        block = Block(lines, self.line, self.offset, consumed, problems)
        if self.line == 0 and self.offset == 0 and lines and lines[0].startswith(BOM):
            lines[0] = lines[0][len(BOM) :]
            block.offset = len(BOM)
        self.offset += consumed
        block.end = self.offset
        self.line += len(lines)
        if len(self._carry) > self._max:
            self._long, self._head, self._carry = len(self._carry), self._carry[:PREVIEW], b""
        return block if lines else None

    def _too_long(self) -> str:
        return f"line longer than {self._max} bytes (--max-line-bytes)"
