"""--follow: load the history, then keep loading what is written to the same inputs.

    listing (new files) ──> active files, in order ──Block──> BatchBuilder ──Batch──> submit
                            (Tail: complete lines       (full batches at once; a partial one
                             only; gzip: read whole)      after --linger seconds)
                            idle files (stat only) ──grew──> active again

One reader task does it all, in rounds: every active file is read up to what exists now
(each `Tail` yields a heartbeat when it has caught up), partial batches older than the linger
go out, files that stopped growing become *idle*, files waiting their turn are opened (at
most MAX_OPEN at once), then the round sleeps `poll_interval`.
A stop cancels the reader task, so a signal ends a wait at once; the partial batches it held
were never in flight and are read again by the next leg.

A file is idle once it has caught up and was last written `idle_timeout` seconds ago (its
mtime, so that the history's old files are idle as soon as they are read): its descriptor is
closed and, if it ends with a newline, it is marked read in the checkpoint. Idle files are
only looked at (one stat each) at every listing; one that grew is read again from where it
stopped. A file ending in an unfinished line is never marked read nor given that line: a run
without --follow sends it as a last line like any other.

Nothing here grows with the records: per followed file a Tail and a builder, per known file a
key and a few numbers; the checkpoint folds each acknowledged batch into its neighbours.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import resource
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from backfill.batching import Batch, BatchBuilder, Plan
from backfill.checkpoint import Checkpoint, FileState
from backfill.config import Settings
from backfill.errors import InputChanged, InputUnreadable, UsageError
from backfill.progress import plural
from backfill.shards import owned_by
from backfill.sources import (
    Block,
    BlockTransform,
    Fingerprint,
    LocalFile,
    Source,
    Start,
    Tail,
    find_sources,
    follow_blocks,
    open_blocks,
    prefix_hashes,
)
from backfill.sources.reader import GZIP_MAGIC

PUBLISH_EVERY = 2.0  # seconds between the follow figures written for `backfill status`
MAX_OPEN = 256  # files read at once; the others wait their turn (a history of many files)


def max_open() -> int:
    """MAX_OPEN, or a quarter of the descriptors this process may open if that is less."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_OPEN if soft == resource.RLIM_INFINITY else max(1, min(MAX_OPEN, soft // 4))


def follow_sources(inputs: list[str], *, strict: bool = True) -> list[Source]:
    """The inputs' files now. A directory with no data file yet, or a glob that matches
    nothing yet, is fine when following (files will come); a missing path is not at the
    start (`strict`: a typo), and later is an input deleted meanwhile (retention)."""
    found: list[Source] = []
    for item in inputs:
        if strict and not (glob.has_magic(item) or os.path.isdir(item)):
            found += find_sources([item])
            continue
        with contextlib.suppress(UsageError):
            found += find_sources([item])
    unique = {source.key: source for source in found}
    return sorted(unique.values(), key=lambda source: source.name)


def grown(source: Source, size: int) -> tuple[str, str]:
    """For `Checkpoint.register_files`: the hashes of the first `size` bytes now."""
    if not isinstance(source, LocalFile):
        raise OSError(f"{source.name} is not a local file")
    return prefix_hashes(source.path, size)


def check_resume_points(files: list[FileState]) -> None:
    """A followed file is let through as "only grown" by the hashes of the bytes the
    checkpoint knew when it registered the file, which may be far fewer than it went on to
    acknowledge (a file empty at the start of the leg is let through whatever it holds now).
    So the resume point must still end a line: a file replaced or rewritten while the
    follower was down almost never has a newline just there, and resuming in it would skip
    its first records and cut one in two. Raises InputChanged (exit 2) as a change does."""
    for f in files:
        if f.done or f.start_offset <= 0 or not isinstance(f.source, LocalFile):
            continue
        try:
            with open(f.source.path, "rb") as fh:
                if fh.read(len(GZIP_MAGIC)) == GZIP_MAGIC:  # read whole, offsets inflated
                    continue
                fh.seek(f.start_offset - 1)
                boundary = fh.read(1) == b"\n"
        except OSError:
            continue  # the reader names an unreadable file
        if not boundary:
            raise InputChanged(
                f"input file {f.source.name} changed since the checkpoint was written: its "
                f"line {f.start_line + 1}, where this load resumes (byte {f.start_offset}), "
                "no longer starts there, so the file was replaced or rewritten, not appended "
                "to; resuming could skip or repeat records. Restore the file, use --restart, "
                "or --force to resume anyway"
            )


class _Stamp(msgspec.Struct):
    timestamp: str | None = None


@dataclass(slots=True)
class Lag:
    """How far behind the load is: what progress, metrics and `status` show."""

    newest: float | None = None  # the newest acknowledged record's timestamp (epoch s)
    last_ack: float | None = None  # when the last batch was acknowledged (epoch s)
    delivery: float | None = None  # read -> acknowledged, seconds, of the last batch
    sent: int = 0  # records handed to the workers
    acked: int = 0  # of which answered
    unread: int = 0  # bytes appended to the followed files and not yet read
    files: int = 0  # files followed (growing or recently written)

    @property
    def waiting(self) -> int:
        return self.sent - self.acked

    def age(self, now: float | None = None) -> float | None:
        if self.newest is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.newest)

    def facts(self, following: bool) -> dict[str, Any]:
        age = self.age()
        return {
            "following": following,
            "updated": round(time.time(), 3),
            "files_followed": self.files,
            "records_waiting": self.waiting,
            "unread_bytes": self.unread,
            "last_ack": self.last_ack,
            "newest_record_age_s": None if age is None else round(age, 3),
            "delivery_s": None if self.delivery is None else round(self.delivery, 3),
        }

    def line(self) -> str:
        age = self.age()
        newest = "--" if age is None else f"{age:,.1f} s old"
        return (
            f"following {plural(self.files, 'file')} | newest record sent {newest} | waiting "
            f"{plural(self.waiting, 'record')}, {self.unread:,} bytes unread"
        )


def record_time(record: bytes) -> float | None:
    """The record's `timestamp` as epoch seconds (UTC if it names no zone), or None."""
    try:
        text = msgspec.json.decode(record, type=_Stamp).timestamp
        if text is None:
            return None
        moment = datetime.fromisoformat(text)
    except (msgspec.DecodeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass(slots=True)
class _Active:
    """A file being read: its reader chain (transforms included) and its batch builder."""

    state: FileState
    blocks: AsyncGenerator[Block, None]
    builder: BatchBuilder
    tail: Tail | None  # None: a compressed file, read whole
    line: int = 0
    pending_since: float | None = None


@dataclass(slots=True)
class _Idle:
    state: FileState
    size: int  # at the moment it went idle
    line: int
    offset: int
    marked: bool  # marked read in the checkpoint (reopened if it grows)
    inode: int  # another one under the same name: replaced, not followed


@dataclass
class Follower:
    """The reader of a --follow leg; `run` returns only by cancellation (a stop)."""

    settings: Settings
    cp: Checkpoint
    transforms: Sequence[BlockTransform]
    builder_for: Callable[[FileState], BatchBuilder]
    submit: Callable[[Batch], Awaitable[None]]
    warn: Callable[[str], None]
    lag: Lag = field(default_factory=Lag)
    _active: dict[str, _Active] = field(default_factory=dict)
    _idle: dict[str, _Idle] = field(default_factory=dict)
    _known: set[str] = field(default_factory=set)
    _waiting: deque[FileState] = field(default_factory=deque)  # in order, not yet opened
    _next_listing: float = 0.0
    _next_publish: float = 0.0
    _max_open: int = field(default_factory=max_open)

    async def run(self, files: list[FileState]) -> None:
        try:
            self._known.update(f.source.key for f in files)
            self._waiting.extend(files)
            while True:
                await self._round()
                await asyncio.sleep(self.settings.poll_interval)
        finally:
            self.cp.note_follow(self.lag.facts(following=False))
            for active in self._active.values():
                await _close(active)

    # -- a round -------------------------------------------------------------------------

    async def _round(self) -> None:
        now = time.monotonic()
        if now >= self._next_listing:
            self._next_listing = now + max(self.settings.poll_interval, 0.5)
            await self._wake_idle()
            await self._discover()
        for key in list(self._active):
            await self._step(key, self._active[key])
        while self._waiting and len(self._active) < self._max_open:
            f = self._waiting.popleft()  # read at once: an old file is done and closed again
            await self._admit(f)
            if (active := self._active.get(f.source.key)) is not None:
                await self._step(f.source.key, active)
        self.lag.files = len(self._active)
        self.lag.unread = sum(a.tail.unread for a in self._active.values() if a.tail)
        if now >= self._next_publish:
            self._next_publish = now + PUBLISH_EVERY
            self.cp.note_follow(self.lag.facts(following=True))

    async def _step(self, key: str, active: _Active) -> None:
        """Reads what the file holds now; then lingers, stops at a replacement, or idles."""
        finished = await self._pump(active)
        tail = active.tail
        if finished or tail is None:
            await self._flush(active)
            await self._mark_read(active, active.line)
            await self._drop(key)
            return
        now = time.monotonic()
        since = active.pending_since
        if since is not None and now - since >= self.settings.linger:
            await self._flush(active)
        if tail.replaced is not None:
            await self._flush(active)
            self.warn(
                f"{active.state.source.name}: {tail.replaced} while it was followed; "
                f"loaded up to line {tail.line:,}, nothing after (rotation by renaming or "
                "copytruncate is not supported: see the README, --follow)"
            )
            await self._drop(key)
        elif time.time() - tail.mtime >= self.settings.idle_timeout:
            await self._flush(active)
            await self._go_idle(key, active)

    async def _pump(self, active: _Active) -> bool:
        """Reads and batches until the file has caught up (True: a compressed one ended)."""
        tail = active.tail
        while True:
            try:
                block = await anext(active.blocks)
            except StopAsyncIteration:
                return True
            except OSError as exc:
                name = active.state.source.name
                raise InputUnreadable(f"cannot read {name}: {exc.strerror or exc}") from None
            if tail is not None and tail.caught_up:
                return False
            active.line = block.first + len(block.lines)
            full = active.builder.feed(block)
            if full:  # whatever is pending now started after them
                active.pending_since = None
            for batch in full:
                await self._send(batch)
            if active.builder.pending and active.pending_since is None:
                active.pending_since = time.monotonic()
            await asyncio.sleep(0)

    async def _send(self, batch: Batch) -> None:
        batch.read_at = time.time()
        self.lag.sent += len(batch.records)
        await self.submit(batch)

    async def _flush(self, active: _Active) -> None:
        active.pending_since = None
        for batch in active.builder.finish():
            await self._send(batch)

    def acked(self, batch: Batch) -> None:
        """A batch's answer came (from a worker): the lag's figures move."""
        now = time.time()
        self.lag.acked += len(batch.records)
        self.lag.last_ack = now
        if batch.read_at:
            self.lag.delivery = now - batch.read_at
        if batch.records and (stamp := record_time(batch.records[-1])) is not None:
            self.lag.newest = stamp if self.lag.newest is None else max(self.lag.newest, stamp)

    # -- files coming and going ------------------------------------------------------------

    async def _admit(self, f: FileState) -> None:
        """A file to read from its resume position (a done one is only watched)."""
        path = Path(f.source.name)
        try:
            size, inode, gzipped = await asyncio.to_thread(_look, path)
            tail = None if gzipped or f.done else await asyncio.to_thread(self._tail, f)
        except FileNotFoundError:
            self.warn(f"{f.source.name}: gone before it could be followed")
            return
        except OSError as exc:
            raise InputUnreadable(f"cannot read {f.source.name}: {exc.strerror or exc}") from None
        if f.done:
            if not gzipped:  # a compressed file is read once, whole
                line, offset = f.start_line, f.start_offset
                self._idle[f.source.key] = _Idle(f, size, line, offset, True, inode)
            return
        if tail is None:
            start = Start(f.start_line, f.start_offset)
            most = self.settings.max_line_bytes
            blocks = open_blocks(f.source, start, self.transforms, max_line_bytes=most)
        else:
            blocks = follow_blocks(f.source, tail, self.transforms)
        self._active[f.source.key] = _Active(f, blocks, self.builder_for(f), tail, f.start_line)

    def _tail(self, f: FileState) -> Tail:
        most = self.settings.max_line_bytes
        tail = Tail(Path(f.source.name), f.start_line, f.start_offset, max_line_bytes=most)
        tail.open()
        return tail

    async def _go_idle(self, key: str, active: _Active) -> None:
        tail = active.tail
        assert tail is not None
        whole = not tail.waiting_for_newline
        if whole:
            await self._mark_read(active, tail.line)
        self._idle[key] = _Idle(active.state, tail.size, tail.line, tail.offset, whole, tail.inode)
        await self._drop(key)

    async def _wake_idle(self) -> None:
        """Idle files that grew are read again from where they stopped."""
        now = await asyncio.to_thread(_stats, [i.state.source.name for i in self._idle.values()])
        for (key, idle), st in zip(list(self._idle.items()), now, strict=True):
            if st is None:
                del self._idle[key]  # deleted (retention): it was read, nothing more comes
                continue
            if st == (idle.size, idle.inode):
                continue
            del self._idle[key]
            if st[0] < idle.size or st[1] != idle.inode:
                how = "replaced by another file" if st[1] != idle.inode else "truncated"
                self.warn(
                    f"{idle.state.source.name}: {how} after it was loaded (up to line "
                    f"{idle.line:,}); not followed any more (rotation by renaming or "
                    "copytruncate is not supported: see the README, --follow)"
                )
                continue
            if idle.marked:
                await self.cp.reopen_file(idle.state.id)
            f = idle.state
            f.lines, f.start_line, f.start_offset = None, idle.line, idle.offset
            f.plan = Plan()  # everything before is settled or in flight
            self._waiting.append(f)

    async def _discover(self) -> None:
        """New files under the inputs, registered and read in name order."""
        listed = await asyncio.to_thread(follow_sources, self.settings.inputs, strict=False)
        new = [s for s in owned_by(listed, self.settings.shard) if s.key not in self._known]
        if not new:
            return
        found = await asyncio.to_thread(_fingerprints, new)  # empty ones: next time
        if not found:
            return
        self._known.update(source.key for source, _ in found)
        files = await self.cp.register_files(found, self.settings.force, grown)
        await self.cp.plan_files(files, [])
        self._waiting.extend(files)

    async def _mark_read(self, active: _Active, lines: int) -> None:
        warning = "; ".join(active.builder.warnings) or None
        if warning:
            self.warn(f"{active.state.source.name}: {warning}")
        await self.cp.mark_file_read(active.state.id, lines, warning)

    async def _drop(self, key: str) -> None:
        await _close(self._active.pop(key))


async def _close(active: _Active) -> None:
    try:
        await active.blocks.aclose()
    finally:
        if active.tail is not None:
            active.tail.close()


def _look(path: Path) -> tuple[int, int, bool]:
    """(size, inode, gzip by its magic bytes) of a file about to be read or watched."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        return st.st_size, st.st_ino, fh.read(2) == GZIP_MAGIC


def _stats(paths: list[str]) -> list[tuple[int, int] | None]:
    """(size, inode) of each path, None for one that is gone: one thread hop for all."""
    found: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:  # deleted, or no longer readable: nothing more to follow in it
            found.append(None)
            continue
        found.append((st.st_size, st.st_ino))
    return found


def _fingerprints(sources: list[Source]) -> list[tuple[Source, Fingerprint]]:
    """Each new source's fingerprint; files still empty (or gone) wait for the next listing."""
    found = []
    for source in sources:
        try:
            fp = source.fingerprint()
        except OSError:
            continue
        if fp.size:
            found.append((source, fp))
    return found
