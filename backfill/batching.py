"""Blocks of lines -> validated batches, each covering an exact range of lines of one file.

A batch never spans two files and always covers a contiguous line range `[start_line,
end_line)`: its valid records, its invalid ones (dead letters) and the lines it skipped
(blank, outside the time window). That makes the checkpoint a set of ranges, so a resume
skips exactly what was acknowledged, whatever order batches finished in.

The body is built by joining the *validated input bytes*; nothing is decoded into objects
and encoded again (see benchmarks: reusing the bytes is the fastest correct encoding).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

from backfill.schema import OUT_OF_WINDOW
from backfill.sources import Block
from backfill.targets import target_for

UPLOAD_ENVELOPE = target_for("interactions").envelope  # bytes of a body around its records


@dataclass(slots=True)
class Rejected:
    """One record that will not reach the API, and why (a dead-letter entry in the making)."""

    line: int  # 0-based line index in the source file
    reason: str
    raw: bytes
    stage: str = "client"  # "client" (our validation) or "server" (the API refused it)


@dataclass(slots=True)
class Batch:
    file_id: int
    source: str
    start_line: int
    end_line: int = 0  # exclusive
    start_offset: int = 0
    end_offset: int = 0
    records: list[bytes] = field(default_factory=list)
    record_lines: list[int] = field(default_factory=list)
    invalid: list[Rejected] = field(default_factory=list)
    filtered: int = 0
    size: int = UPLOAD_ENVELOPE  # body bytes if sent as it is
    read_at: float = 0.0  # --follow: when its last line was read (time.time()), for the lag

    @property
    def key(self) -> tuple[int, int]:
        return (self.file_id, self.start_line)

    @property
    def lines_read(self) -> int:
        return len(self.records) + len(self.invalid) + self.filtered


@dataclass(frozen=True, slots=True)
class Plan:
    """What a resumed file must do besides reading: ranges to skip, boundaries to keep."""

    skip: tuple[tuple[int, int], ...] = ()  # acknowledged [start, end) line ranges, sorted
    cuts: frozenset[int] = frozenset()  # line indexes where a batch must start (ambiguous)


class BatchBuilder:
    """Feeds blocks of one file, returns full batches; `finish()` returns the last one.

    Like the Elasticsearch bulk chunker it checks fullness *before* appending, so a record
    larger than the byte limit still goes out, alone.
    """

    def __init__(
        self,
        file_id: int,
        source: str,
        check: Callable[[bytes], str | None],
        *,
        max_records: int,
        max_bytes: int,
        envelope: int = UPLOAD_ENVELOPE,
        plan: Plan = Plan(),
    ) -> None:
        self.file_id, self.source, self._check = file_id, source, check
        self._max_records, self._max_bytes = max_records, max_bytes
        self._envelope = envelope
        self._skip = list(plan.skip)
        self._cuts = plan.cuts
        self._events = sorted({s for s, _ in plan.skip} | set(plan.cuts))
        self._batch: Batch | None = None
        self._end = (0, 0)  # (line, offset) just after the last line scanned
        self._done: list[Batch] = []
        self.warnings: list[str] = []

    def feed(self, block: Block) -> list[Batch]:
        if block.warning:
            self.warnings.append(block.warning)
        first, stop = block.first, block.first + len(block.lines)
        pos = first
        while pos < stop:
            skip_end = self._skip_end(pos)
            if skip_end is not None:
                self._close(block, pos)
                pos = min(skip_end, stop)
                continue
            if pos in self._cuts:
                self._close(block, pos)
            seg_end = min(stop, self._next_event(pos))
            self._scan(block, pos, seg_end)
            self._end_at(block, seg_end)
            pos = seg_end
        done, self._done = self._done, []
        return done

    @property
    def pending(self) -> bool:
        """A partial batch is open: what `finish()` would return."""
        return self._batch is not None

    def finish(self) -> list[Batch]:
        """The last partial batch (at end of file, or when --follow's linger is over: the
        builder goes on from there with the next block)."""
        if self._batch is not None:
            self._batch.end_line, self._batch.end_offset = self._end
            self._done.append(self._batch)
            self._batch = None
        done, self._done = self._done, []
        return done

    # -- internals ---------------------------------------------------------------------

    def _skip_end(self, pos: int) -> int | None:
        while self._skip and self._skip[0][1] <= pos:
            self._skip.pop(0)
        if self._skip and self._skip[0][0] <= pos:
            return self._skip[0][1]
        return None

    def _next_event(self, pos: int) -> int:
        for e in self._events:
            if e > pos:
                return e
        return 1 << 62

    def _open(self, block: Block, line: int) -> Batch:
        batch = Batch(
            self.file_id,
            self.source,
            line,
            start_offset=block.end_offset(line),
            size=self._envelope,
        )
        self._batch = batch
        return batch

    def _close(self, block: Block, line: int) -> None:
        batch = self._batch
        if batch is None:
            return
        batch.end_line = line
        batch.end_offset = block.end_offset(line)
        self._done.append(batch)
        self._batch = None

    def _scan(self, block: Block, start: int, stop: int) -> None:
        """The hot path: validate lines [start, stop) of `block` into batches.

        Validation runs as one `map` over the lines; when every line is valid (the common
        case) whole slices are appended at once, cut by count (and by bytes with bisect over
        cumulative sizes when they would not fit), so no Python code runs per record beyond
        `check` itself.
        """
        lines = block.lines[start - block.first : stop - block.first]
        reasons = list(map(self._check, lines))
        if reasons.count(None) == len(lines):
            self._take_valid(block, lines, start)
        else:
            self._take_mixed(block, lines, start, reasons)

    def _take_valid(self, block: Block, lines: list[bytes], start: int) -> None:
        i, n = 0, len(lines)
        while i < n:
            batch = self._batch or self._open(block, start + i)
            j = min(n, i + self._max_records - len(batch.records))
            chunk = lines[i:j]
            size = sum(map(len, chunk)) + len(chunk)  # with a separator each
            if batch.size + size > self._max_bytes:  # cut by bytes (rare): the most that fit
                cum = list(accumulate(map((1).__add__, map(len, chunk)), initial=0))
                k = max(0, bisect_right(cum, self._max_bytes - batch.size) - 1)
                if k == 0:
                    if batch.records:  # the next record does not fit: this batch is full
                        self._close(block, start + i)
                        continue
                    k = 1  # a record larger than the limit goes out alone
                chunk, j, size = chunk[:k], i + k, cum[k]
            batch.records += chunk
            batch.record_lines += range(start + i, start + j)
            batch.size += size
            i = j
            if len(batch.records) >= self._max_records:
                self._close(block, start + i)

    def _take_mixed(
        self, block: Block, lines: list[bytes], start: int, reasons: list[str | None]
    ) -> None:
        """Line by line, for blocks with blank, invalid or filtered lines."""
        max_records, max_bytes = self._max_records, self._max_bytes
        batch = self._batch or self._open(block, start)
        stop = start + len(lines)
        for index, line, reason in zip(range(start, stop), lines, reasons, strict=True):
            if not line:  # blank, or a problem (see sources.block)
                problem = block.problems.get(index)
                if problem is None:
                    pass
                elif problem.filtered:
                    batch.filtered += 1
                else:
                    batch.invalid.append(Rejected(index, problem.reason, problem.raw))
            elif reason is None:
                n = len(line) + 1
                if batch.size + n > max_bytes and batch.records:
                    self._close(block, index)
                    batch = self._open(block, index)
                batch.records.append(line)
                batch.record_lines.append(index)
                batch.size += n
                if len(batch.records) >= max_records:
                    self._close(block, index + 1)
                    if index + 1 >= stop:
                        break
                    batch = self._open(block, index + 1)
            elif reason is OUT_OF_WINDOW:
                batch.filtered += 1
            elif line.isspace():
                pass  # whitespace only (" ", "\r"): blank; checked only once invalid
            else:
                batch.invalid.append(Rejected(index, reason, line))
                if len(batch.invalid) >= max_records:
                    self._close(block, index + 1)
                    if index + 1 >= stop:
                        break
                    batch = self._open(block, index + 1)

    def _end_at(self, block: Block, stop: int) -> None:
        self._end = (stop, block.end_offset(stop))
