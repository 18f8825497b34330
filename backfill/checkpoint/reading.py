"""Reading a checkpoint without writing it: totals, warnings, settled and ambiguous ranges
(for the report of a leg and for `backfill status`)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backfill.checkpoint.store import DB_NAME, MERGED_KEY
from backfill.errors import UsageError


@dataclass(slots=True)
class Totals:
    """The whole load so far, every leg included (from acknowledged batches)."""

    records_valid: int = 0
    records_invalid: int = 0
    records_filtered: int = 0
    records_accepted: int = 0
    records_rejected_by_server: int = 0
    records_assumed_delivered: int = 0
    requests: int = 0
    retries: int = 0
    possibly_duplicated: int = 0
    duration_s: float = 0.0
    legs: int = 0
    files_total: int = 0
    files_done: int = 0
    batches_acked: int = 0

    @property
    def records_read(self) -> int:
        return self.records_valid + self.records_invalid + self.records_filtered


def read_totals(db: sqlite3.Connection) -> Totals:
    t = Totals()
    row = db.execute(
        "SELECT COALESCE(SUM(records),0), COALESCE(SUM(invalid),0), COALESCE(SUM(filtered),0), "
        "COALESCE(SUM(accepted),0), COALESCE(SUM(rejected),0), COUNT(*) "
        "FROM batches WHERE state='acked'"
    ).fetchone()
    (
        t.records_valid,
        t.records_invalid,
        t.records_filtered,
        t.records_accepted,
        t.records_rejected_by_server,
        t.batches_acked,
    ) = row
    row = db.execute(
        "SELECT COALESCE(SUM(records),0), COALESCE(SUM(invalid),0), COALESCE(SUM(filtered),0) "
        "FROM batches WHERE state='skipped'"
    ).fetchone()
    t.records_assumed_delivered = row[0]
    t.records_valid += row[0]
    t.records_invalid += row[1]
    t.records_filtered += row[2]
    t.possibly_duplicated = db.execute(
        "SELECT COALESCE(SUM(records),0) FROM ambiguous WHERE resolution IN ('resent', 'retried')"
    ).fetchone()[0]
    row = db.execute(
        "SELECT COALESCE(SUM(last_seen - started),0), COUNT(*), COALESCE(SUM(requests),0), "
        "COALESCE(SUM(retries),0) FROM legs"
    ).fetchone()
    t.duration_s, t.legs = float(row[0]), int(row[1])
    # every request and retry of every leg, those of batches never acknowledged included
    t.requests, t.retries = int(row[2]), int(row[3])
    t.files_total = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    merged = db.execute("SELECT value FROM meta WHERE key=?", (MERGED_KEY,)).fetchone()
    t.batches_acked += int(merged[0]) if merged else 0
    return t


def read_warnings(db: sqlite3.Connection) -> list[str]:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name='warnings'").fetchone():
        return []  # a checkpoint from before warnings were kept, read without writing
    return [r[0] for r in db.execute("SELECT message FROM warnings ORDER BY rowid")]


def read_settled(db: sqlite3.Connection) -> list[tuple[int, str, int | None, int]]:
    """Each known file: (id, path, lines once read to its end, lines acknowledged or skipped).
    Batches are acknowledged out of order, so only the sum tells a file that is done."""
    return db.execute(
        "SELECT f.id, f.path, f.lines, COALESCE(SUM(b.end_line - b.start_line), 0) "
        "FROM files f LEFT JOIN batches b ON b.file_id = f.id "
        "AND b.state IN ('acked', 'skipped') GROUP BY f.id ORDER BY f.path"
    ).fetchall()


def read_ambiguous(db: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT f.path, a.start_line, a.end_line, a.records, a.leg, a.resolution "
        "FROM ambiguous a JOIN files f ON f.id = a.file_id ORDER BY a.leg, f.path, a.start_line"
    ).fetchall()
    return [
        {
            "source": r[0],
            "first_line": r[1] + 1,
            "last_line": r[2],
            "records": r[3],
            "leg": r[4],
            "resolution": r[5],
        }
        for r in rows
    ]


def open_readonly(state_dir: Path) -> sqlite3.Connection:
    """Reads without writing anything: with no WAL file (the last run closed cleanly) the
    database is opened immutable, so SQLite creates no -wal/-shm files, and a read-only
    state dir can be read."""
    path = state_dir / DB_NAME
    if not path.is_file():
        raise UsageError(f"no checkpoint in {state_dir} (expected {path})")
    wal = Path(f"{path}-wal").exists()
    uri = f"{path.resolve().as_uri()}?{'mode=ro' if wal else 'immutable=1'}"
    return sqlite3.connect(uri, uri=True)
