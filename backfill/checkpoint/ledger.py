"""The batch ledger: each batch's line range as in flight, acknowledged or unsent, and the
ranges left ambiguous by a stop (maybe stored, maybe not)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from backfill.batching import Batch
from backfill.checkpoint.store import MERGED_KEY, Store


class Outcome(NamedTuple):
    """What the API did with an acknowledged batch (the columns after its counts)."""

    accepted: int = 0
    rejected: int = 0  # records the server refused (dead letters)
    requests: int = 0
    retries: int = 0
    maybe_twice: int = 0  # records a lost attempt may have stored before a retry did


NOTHING_SENT = Outcome()  # a batch of invalid or filtered lines only, settled unsent


def _row(batch: Batch) -> tuple[int, ...]:
    """A batch's columns: file_id, start_line, end_line, start_offset, end_offset, then
    (after the state) records, invalid, filtered."""
    return (
        *batch.key,
        batch.end_line,
        batch.start_offset,
        batch.end_offset,
        len(batch.records),
        len(batch.invalid),
        batch.filtered,
    )


@dataclass(frozen=True, slots=True)
class AmbiguousRange:
    """A range that was in flight at the last stop. `sent` False: its request was answered
    with a refusal that stores nothing (401, a 5xx with retries exhausted), so it is read
    and sent again whatever --ambiguous says, and never counted as a possible duplicate."""

    source: str
    file_id: int
    start_line: int  # 0-based
    end_line: int
    records: int
    sent: bool = True


class Ledger(Store):
    """The `batches` and `ambiguous` tables."""

    async def take_ambiguous(self, mode: str, sources: dict[int, str]) -> list[AmbiguousRange]:
        """Turns the batches in flight at the last stop into ambiguous ranges, resolved per mode.

        resend: the inflight rows are deleted (so those lines are read and sent again, as
        batches of their own) and their records counted as possibly duplicated.
        skip: the rows become `skipped`, i.e. treated as delivered (at most once).
        """
        return await self._call(self._take_ambiguous, mode, sources)

    def _take_ambiguous(self, mode: str, sources: dict[int, str]) -> list[AmbiguousRange]:
        db = self._require()
        rows = db.execute(
            "SELECT file_id, start_line, end_line, records, state = 'inflight' FROM batches "
            "WHERE state IN ('inflight', 'unsent')"
        ).fetchall()
        found = [
            AmbiguousRange(sources.get(r[0], f"file #{r[0]}"), r[0], r[1], r[2], r[3], bool(r[4]))
            for r in rows
        ]
        resolution = "resent" if mode == "resend" else "skipped"
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO ambiguous VALUES (?, ?, ?, ?, ?, ?)",
                (a.file_id, a.start_line, a.end_line, a.records, self.leg, resolution),
            )
            for a in found
            if a.sent
        ]
        statements.append(("DELETE FROM batches WHERE state='unsent'", ()))
        if mode == "resend":
            statements.append(("DELETE FROM batches WHERE state='inflight'", ()))
        else:
            statements.append(("UPDATE batches SET state='skipped' WHERE state='inflight'", ()))
        self._tx(statements)
        return found

    async def mark_inflight(self, batch: Batch) -> None:
        """Before sending: the batch's range, and what it holds, as in flight."""
        await self._call(
            self._tx,
            [
                (
                    "INSERT OR REPLACE INTO batches (file_id, start_line, end_line, "
                    "start_offset, end_offset, state, records, invalid, filtered) "
                    "VALUES (?, ?, ?, ?, ?, 'inflight', ?, ?, ?)",
                    _row(batch),
                )
            ],
        )

    async def mark_acked(
        self,
        batch: Batch,
        outcome: Outcome = NOTHING_SENT,
        *,
        leg: tuple[int, int] = (0, 0),
        first: Callable[[], None] | None = None,
    ) -> None:
        """After the answer (the default outcome: a batch with nothing to send); `leg` is
        (requests, retries) of the whole leg so far, failed batches included.

        `outcome.maybe_twice` > 0: an attempt was lost after it may have been stored and a
        retry then succeeded, so that many records may be stored twice; the range is
        recorded as ambiguous ("retried") for the report.

        `first` runs on the checkpoint thread just before the transaction, in the same
        shielded call: what must be on disk before the batch counts as acknowledged (its
        dead letters' fsync), off the event loop and never skipped by a cancellation.
        """
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT OR REPLACE INTO batches "
                "VALUES (?, ?, ?, ?, ?, 'acked', ?, ?, ?, ?, ?, ?, ?)",
                (*_row(batch), *outcome[:4]),
            ),
            self._leg_row(leg),
        ]
        if outcome.maybe_twice:
            statements.append(
                (
                    "INSERT INTO ambiguous VALUES (?, ?, ?, ?, ?, 'retried')",
                    (*batch.key, batch.end_line, outcome.maybe_twice, self.leg),
                )
            )
        merge = (batch.file_id, batch.start_line, batch.end_line) if self.merge else None
        await self._call(self._settle, statements, first, merge)

    def _leg_row(self, leg: tuple[int, int]) -> tuple[str, tuple[Any, ...]]:
        """The leg's last sign of life and its (requests, retries) so far."""
        return (
            "UPDATE legs SET last_seen=?, requests=?, retries=? WHERE id=?",
            (time.time(), *leg, self.leg),
        )

    def _settle(
        self,
        statements: list[tuple[str, tuple[Any, ...]]],
        first: Callable[[], None] | None,
        merge: tuple[int, int, int] | None = None,
    ) -> None:
        if first is not None:
            first()
        self._tx(statements, then=(lambda db: _merge(db, *merge)) if merge else None)

    async def mark_unsent(self, batch: Batch) -> None:
        """The batch in flight was refused in a way that stores nothing: not ambiguous."""
        await self._call(
            self._tx,
            [("UPDATE batches SET state='unsent' WHERE file_id=? AND start_line=?", batch.key)],
        )


def _merge(db: sqlite3.Connection, file_id: int, start: int, end: int) -> None:
    """Folds the acknowledged range [start, end) and the acknowledged ranges that end where
    it starts or start where it ends into one row: the counts add up, the offsets span."""
    rows = db.execute(
        "SELECT start_line, end_line, start_offset, end_offset, records, invalid, filtered, "
        "accepted, rejected, requests, retries FROM batches WHERE file_id=? AND state='acked' "
        "AND (end_line=? OR start_line=? OR start_line=?) ORDER BY start_line",
        (file_id, start, start, end),
    ).fetchall()
    if len(rows) < 2:
        return
    sums = [sum(r[i] for r in rows) for i in range(4, 11)]
    db.execute(
        "DELETE FROM batches WHERE file_id=? AND state='acked' AND start_line IN "
        f"({','.join('?' * len(rows))})",
        (file_id, *(r[0] for r in rows)),
    )
    db.execute(
        "INSERT INTO batches VALUES (?, ?, ?, ?, ?, 'acked', ?, ?, ?, ?, ?, ?, ?)",
        (file_id, rows[0][0], rows[-1][1], rows[0][2], rows[-1][3], *sums),
    )
    db.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
        "value = CAST(value AS INTEGER) + excluded.value",
        (MERGED_KEY, str(len(rows) - 1)),
    )
