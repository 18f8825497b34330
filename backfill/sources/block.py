"""A block of lines, the unit that flows from the reader through the transforms to batching.

The contract: `lines[i]` is line `first + i` of the source (0-based). A line that is not
delivered as a record, a *problem*, leaves b"" in its slot and a `Problem` in `problems`
under its line index: refused (a dead letter with its reason) or `filtered` on purpose
(counted, no dead letter). Offsets are computed from each line's length *as stored*, so a
transform that changes a line goes through `replace`, `reject` or `filter`, which keep that
length; one that builds a new block passes `stored_lengths()` of the old one as
`raw_lengths` and fills the new block's lines, then uses the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from backfill.sources.source import Source

PREVIEW = 64 * 1024  # bytes of an undeliverable line kept for its dead-letter entry


class Problem(NamedTuple):
    """A line not delivered as a record: refused (`reason` says why, a dead letter) or
    `filtered` on purpose (a mapping's drop rule, a superseded catalog record; `reason`
    names the rule, nothing is dead-lettered)."""

    reason: str
    length: int  # bytes of the line as stored (its slot in Block.lines holds b"")
    raw: bytes = b""  # what to show in the dead-letter entry (possibly a prefix)
    filtered: bool = False


@dataclass(slots=True)
class Block:
    """Consecutive lines of one source. `lines[i]` is line index `first + i` (0-based)."""

    lines: list[bytes]
    first: int
    offset: int  # uncompressed byte offset of lines[0]
    raw_bytes: int  # bytes of the source (as stored) consumed since the previous block
    problems: dict[int, Problem] = field(default_factory=dict)  # by line index
    warning: str | None = None  # a problem of the source, not of a line
    # Each line's length as stored, once a transform changed a line (else len(lines[i]),
    # and a problem's own length): what offsets are computed from.
    raw_lengths: list[int] | None = None
    end: int | None = None  # offset just after the last line, when the reader knows it
    _sizes: list[int] | None = field(default=None, repr=False)  # cumulative line lengths

    def replace(self, i: int, line: bytes) -> None:
        """Slot `i` now holds `line` (a rewritten record); its stored length stays."""
        if self.raw_lengths is None:
            self.stored_lengths()
        self.lines[i] = line

    def reject(self, i: int, reason: str, raw: bytes) -> None:
        """Slot `i` becomes a dead letter: `reason`, and `raw` (a prefix is kept) to show."""
        lengths = self.stored_lengths()
        self.problems[self.first + i] = Problem(reason, lengths[i], raw[:PREVIEW])
        self.lines[i] = b""

    def filter(self, i: int, why: str = "") -> None:
        """Slot `i` is left out on purpose: counted as filtered, never dead-lettered."""
        lengths = self.stored_lengths()
        self.problems[self.first + i] = Problem(why, lengths[i], filtered=True)
        self.lines[i] = b""

    def stored_lengths(self) -> list[int]:
        """Each line's length as stored, fixed from now on (taken in one C-level pass)."""
        if self.raw_lengths is None:
            lengths = list(map(len, self.lines))
            for index, problem in self.problems.items():
                lengths[index - self.first] = problem.length
            self.raw_lengths, self._sizes = lengths, None
        return self.raw_lengths

    def end_offset(self, upto: int) -> int:
        """Uncompressed offset where line index `upto` starts (`upto` within this block)."""
        n = upto - self.first
        if n == len(self.lines) and self.end is not None:
            return self.end
        if self._sizes is None:  # computed once: a block is cut at several places
            lengths = self.raw_lengths if self.raw_lengths is not None else map(len, self.lines)
            self._sizes = list(accumulate(lengths, initial=0))
        size = self._sizes[n] + n
        if self.raw_lengths is None:
            size += sum(p.length for i, p in self.problems.items() if i < upto)
        return self.offset + size


class BlockTransform(Protocol):
    """Rewrites a source's blocks between reading and validation (mapping, ids, privacy,
    catalog marks), keeping the block contract above: the unit stays a physical line (a
    record spanning lines sits in its first line's slot, the others are b"")."""

    def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]: ...
