"""The input files the checkpoint knows: their fingerprints, and where reading resumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backfill.batching import Plan
from backfill.checkpoint.ledger import AmbiguousRange
from backfill.checkpoint.reading import read_settled
from backfill.checkpoint.store import Store
from backfill.errors import InputChanged
from backfill.sources import Fingerprint, Source


@dataclass(frozen=True, slots=True)
class Range:
    start: int
    end: int
    end_offset: int


@dataclass(slots=True)
class FileState:
    """One input as the checkpoint knows it, and where reading must start."""

    id: int
    source: Source
    lines: int | None  # known once the reader has seen its end
    start_line: int = 0
    start_offset: int = 0
    plan: Plan = field(default_factory=Plan)

    @property
    def done(self) -> bool:
        return self.lines is not None and self.start_line >= self.lines

    def settled(self, line: int) -> bool:
        """Is this 0-based line in a range the checkpoint holds as delivered (or skipped)?"""
        return self.done or line < self.start_line or any(s <= line < e for s, e in self.plan.skip)


def _appended(
    source: Source,
    row: tuple[Any, ...],
    fp: Fingerprint,
    grown: Callable[[Source, int], tuple[str, str]] | None,
) -> bool:
    """Is `source` the file of `row` with only bytes appended (or nothing but its mtime
    changed)? Never without `grown` (--follow), never when it is smaller."""
    if grown is None or fp.size < row[2]:
        return False
    try:
        return grown(source, row[2]) == (row[4], row[5])
    except OSError:
        return False


class Files(Store):
    """The `files` table: one row per input, matched by its key on every leg."""

    async def register_files(
        self,
        files: list[tuple[Source, Fingerprint]],
        force: bool,
        grown: Callable[[Source, int], tuple[str, str]] | None = None,
    ) -> list[FileState]:
        """Each source's row, found by its key (for a local file, its absolute path).

        `grown` (--follow) tells a file that was only appended to from one that changed:
        given a source and the size the checkpoint knew, the (head, tail) hashes of its
        first that many bytes now. Equal to the stored ones: the file grew, its row takes
        the new fingerprint and it is read on from where it was."""
        return await self._call(self._register_files, files, force, grown)

    def _register_files(
        self,
        files: list[tuple[Source, Fingerprint]],
        force: bool,
        grown: Callable[[Source, int], tuple[str, str]] | None,
    ) -> list[FileState]:
        db = self._require()
        known = {
            row[1]: row
            for row in db.execute("SELECT id, path, size, mtime_ns, head, tail, lines FROM files")
        }
        states: list[FileState] = []
        for source, fp in files:
            key = source.key
            row = known.get(key)
            if row is not None and (row[2], row[3], row[4], row[5]) != (
                fp.size,
                fp.mtime_ns,
                fp.head,
                fp.tail,
            ):
                appended = _appended(source, row, fp, grown)
                if not (force or appended):
                    raise InputChanged(
                        f"input file {source.name} changed since the checkpoint was written "
                        f"(size {row[2]} -> {fp.size}); resuming could skip or repeat records. "
                        "Restore the file, use --restart, or --force to resume anyway"
                    )
                lines = row[6] if appended and fp.size == row[2] else None
                db.execute(
                    "UPDATE files SET size=?, mtime_ns=?, head=?, tail=?, lines=? WHERE id=?",
                    (fp.size, fp.mtime_ns, fp.head, fp.tail, lines, row[0]),
                )
                row = (row[0], *row[1:6], lines)
            if row is None:
                cur = db.execute(
                    "INSERT INTO files (path, size, mtime_ns, head, tail) VALUES (?, ?, ?, ?, ?)",
                    (key, fp.size, fp.mtime_ns, fp.head, fp.tail),
                )
                row = (int(cur.lastrowid or 0), key, fp.size, fp.mtime_ns, fp.head, fp.tail, None)
            states.append(FileState(int(row[0]), source, row[6]))
        return states

    async def reopen_file(self, file_id: int) -> None:
        """--follow: a file read to its end has grown since; it is no longer done."""
        await self._call(self._tx, [("UPDATE files SET lines=NULL WHERE id=?", (file_id,))])

    async def vanished(self, present: list[FileState]) -> list[tuple[str, int | None, int]]:
        """Files an earlier leg knew that are not among this leg's inputs:
        (path, lines if the reader saw its end, lines settled)."""
        return await self._call(self._vanished, {f.id for f in present})

    def _vanished(self, present: set[int]) -> list[tuple[str, int | None, int]]:
        rows = read_settled(self._require())
        return [(path, lines, settled) for id_, path, lines, settled in rows if id_ not in present]

    async def plan_files(self, files: list[FileState], cuts: list[AmbiguousRange]) -> None:
        """Fills each file's start position and skip plan from the acknowledged ranges."""
        await self._call(self._plan_files, files, cuts)

    def _plan_files(self, files: list[FileState], cuts: list[AmbiguousRange]) -> None:
        db = self._require()
        for f in files:
            rows = db.execute(
                "SELECT start_line, end_line, end_offset FROM batches "
                "WHERE file_id=? AND state IN ('acked', 'skipped') ORDER BY start_line",
                (f.id,),
            ).fetchall()
            ranges = [Range(*r) for r in rows]
            while ranges and ranges[0].start == f.start_line:
                f.start_line, f.start_offset = ranges[0].end, ranges[0].end_offset
                ranges.pop(0)
            boundaries = {c.start_line for c in cuts if c.file_id == f.id}
            boundaries |= {c.end_line for c in cuts if c.file_id == f.id}
            f.plan = Plan(tuple((r.start, r.end) for r in ranges), frozenset(boundaries))

    async def mark_file_read(self, file_id: int, lines: int, warning: str | None) -> None:
        await self._call(
            self._tx,
            [("UPDATE files SET lines=?, warning=? WHERE id=?", (lines, warning, file_id))],
        )
