"""What the API acknowledged, durably: a SQLite database in WAL mode under the state dir.

The unit is a *line range* of one input file (a batch). Before a batch is sent it is written
as `inflight`; when its answer arrives it becomes `acked` with its counts, in one fsync'd
transaction (synchronous=FULL survives power loss). A resume therefore knows exactly:
  * acked ranges        -> skipped (a contiguous prefix by seeking, the rest line by line);
  * inflight ranges     -> *ambiguous*: maybe stored. Re-sent (default) or assumed delivered;
  * everything else     -> never reached the API, read again.
No other range is ever sent twice. All SQLite work runs on one dedicated thread so that an
fsync never stalls the event loop; one process owns a state dir at a time (flock).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from backfill.batching import Batch, Plan
from backfill.errors import (
    BackfillError,
    CheckpointLost,
    InputChanged,
    StateLocked,
    StateUnwritable,
    UsageError,
)
from backfill.sources import Fingerprint, Source

T = TypeVar("T")
log = logging.getLogger("backfill")
DB_NAME = "checkpoint.sqlite"
LOCK_NAME = "lock"
CORE_TABLES = ("meta", "files", "batches", "legs")  # in every checkpoint since the first

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, head TEXT NOT NULL, tail TEXT NOT NULL,
    lines INTEGER,                 -- set when the reader reached the end of the file
    warning TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    file_id INTEGER NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    start_offset INTEGER NOT NULL, end_offset INTEGER NOT NULL,
    state TEXT NOT NULL,           -- inflight | acked | skipped (ambiguous, assumed delivered)
    records INTEGER NOT NULL, invalid INTEGER NOT NULL, filtered INTEGER NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (file_id, start_line)
);
CREATE TABLE IF NOT EXISTS ambiguous (
    file_id INTEGER NOT NULL, start_line INTEGER NOT NULL, end_line INTEGER NOT NULL,
    records INTEGER NOT NULL, leg INTEGER NOT NULL, resolution TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS warnings (message TEXT PRIMARY KEY, leg INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS legs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, last_seen REAL NOT NULL,
    exit_code INTEGER, error TEXT,
    requests INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0  -- of the leg so far
);
"""


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


class Checkpoint:
    """Async facade; every method's SQL runs on the checkpoint thread."""

    def __init__(self, state_dir: Path, *, merge: bool = False) -> None:
        self.state_dir = state_dir
        # --follow: an acknowledged batch is folded into the acknowledged range it continues,
        # so hours of small batches keep one row per file, not one per batch
        self.merge = merge
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self.leg = 0
        self.previous_leg_crashed = False  # the last leg never recorded its end (kill -9)
        self.followed = False  # an earlier leg ran with --follow: its files may have grown

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        state_dir: Path,
        *,
        fresh: bool = False,
        dead_letter: Path | None = None,
        merge: bool = False,
    ) -> Checkpoint:
        """Locks the state dir and opens its checkpoint, creating it on a first run.

        A missing or empty checkpoint in a state dir that shows an earlier run (its lock,
        WAL files, dead letters) is refused unless `fresh` (--restart): starting afresh
        would send again every record that run had acknowledged."""
        cp = cls(state_dir, merge=merge)
        await cp.connect(fresh=fresh, dead_letter=dead_letter)
        return cp

    async def connect(self, *, fresh: bool = False, dead_letter: Path | None = None) -> None:
        """See `open`; on failure the checkpoint is left closed."""
        try:
            traces = [] if fresh else self._traces(dead_letter)
            self.lock()
            await self._call(self._connect, traces)
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise UsageError(
                f"cannot use state dir {self.state_dir}: {exc} (--restart --yes starts over)"
            ) from None
        except BackfillError:
            await self.close()
            raise

    def _traces(self, dead_letter: Path | None) -> list[str]:
        """What an earlier run leaves in the state dir besides its checkpoint."""
        names = [LOCK_NAME, DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"]
        found = [n for n in names if (self.state_dir / n).exists()]
        inside = (
            dead_letter is not None and dead_letter.resolve().parent == self.state_dir.resolve()
        )
        if dead_letter is not None and inside and dead_letter.exists():
            found.append(dead_letter.name)
        return found

    @classmethod
    @contextlib.contextmanager
    def exclusive(cls, state_dir: Path) -> Iterator[None]:
        """Holds the state dir's lock without opening the database (to reset it)."""
        holder = cls(state_dir)
        holder.lock()
        try:
            yield
        finally:
            holder.unlock()
            holder._pool.shutdown(wait=False)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def lock(self) -> None:
        """One process per state dir: a second one is refused, naming the holder's pid."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StateLocked(
                f"state dir {self.state_dir} is in use by another backfill process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _connect(self, traces: list[str]) -> None:
        path = self.state_dir / DB_NAME
        if not path.exists():
            if traces:
                raise self._lost("is missing", traces)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._check_tables(db, traces)
        except BaseException:
            db.close()
            raise
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(str(path) + suffix, 0o600)
        self._db = db

    def _check_tables(self, db: sqlite3.Connection, traces: list[str]) -> None:
        """Every checkpoint ever written has these tables; none of them is a first run,
        some of them is damage."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in CORE_TABLES if t not in tables]
        if not missing or (len(missing) == len(CORE_TABLES) and not traces):
            return
        if len(missing) < len(CORE_TABLES):
            raise self._lost(f"has lost tables ({', '.join(missing)})", traces)
        size = (self.state_dir / DB_NAME).stat().st_size
        raise self._lost("is empty (0 bytes)" if size == 0 else "has no tables", traces)

    def _lost(self, what: str, traces: list[str]) -> CheckpointLost:
        return CheckpointLost(
            f"the checkpoint {self.state_dir / DB_NAME} {what}, but the state dir shows an "
            f"earlier run ({', '.join(traces)}): starting afresh would send again every record "
            "that run had acknowledged. Restore the checkpoint, or start over on purpose with "
            "--restart --yes"
        )

    async def close(self) -> None:
        if self._db is not None:
            await self._call(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)
        self.unlock()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the checkpoint thread. Shielded: once submitted, a write always lands
        (or fails whole: a full disk is a `StateUnwritable` the run stops on)."""
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.shield(loop.run_in_executor(self._pool, fn, *args))
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: sqlite3.Error) -> StateUnwritable:
        why = "no space left" if exc.sqlite_errorcode == sqlite3.SQLITE_FULL else str(exc)
        return StateUnwritable(
            f"cannot write the checkpoint in the state dir {self.state_dir} ({why}; the disk "
            "may be full): nothing acknowledged is lost; free space and rerun the same command "
            "to resume"
        )

    def _tx(
        self,
        statements: Iterable[tuple[str, tuple[Any, ...]]],
        then: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """One transaction; a failure, COMMIT's own (a full disk) included, rolls it back.
        `then` runs inside it, after the statements."""
        db = self._require()
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.execute(sql, params)
            if then is not None:
                then(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("checkpoint is closed")
        return self._db

    # -- run setup -----------------------------------------------------------------------

    async def start_leg(self, settings_fp: dict[str, Any], command: str) -> dict[str, Any] | None:
        """Records this leg; returns the previous settings fingerprint (None on a new run)."""
        return await self._call(self._start_leg, settings_fp, command)

    def _start_leg(self, settings_fp: dict[str, Any], command: str) -> dict[str, Any] | None:
        db = self._require()
        row = db.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        previous = json.loads(row[0]) if row else None
        if previous is not None and previous.get("kind") != settings_fp.get("kind"):
            raise UsageError(
                f"state dir {self.state_dir} holds a {previous.get('kind')} load; this run is "
                f"{settings_fp.get('kind')}: use another --state-dir or --restart"
            )
        last = db.execute("SELECT exit_code FROM legs ORDER BY id DESC LIMIT 1").fetchone()
        self.previous_leg_crashed = last is not None and last[0] is None
        self.followed = db.execute("SELECT 1 FROM meta WHERE key='follow'").fetchone() is not None
        now = time.time()
        cur = db.execute("INSERT INTO legs (started, last_seen) VALUES (?, ?)", (now, now))
        self.leg = int(cur.lastrowid or 0)
        meta = {"settings": json.dumps(settings_fp, sort_keys=True), "command": command}
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        return previous

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

    # -- per batch -----------------------------------------------------------------------

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

    async def mark_file_read(self, file_id: int, lines: int, warning: str | None) -> None:
        await self._call(
            self._tx,
            [("UPDATE files SET lines=?, warning=? WHERE id=?", (lines, warning, file_id))],
        )

    async def end_leg(self, exit_code: int, error: str | None, leg: tuple[int, int]) -> None:
        """`leg`: (requests, retries) of this leg."""
        await self._call(
            self._tx,
            [
                (
                    "UPDATE legs SET last_seen=?, exit_code=?, error=?, requests=?, retries=? "
                    "WHERE id=?",
                    (time.time(), exit_code, error, *leg, self.leg),
                )
            ],
        )

    def note_warning(self, message: str) -> None:
        """Kept for the report of every later leg. Queued on the checkpoint thread without
        waiting (a warning is said where no await is possible); `close` waits for it."""
        self._pool.submit(self._note_warning, message)

    def _note_warning(self, message: str) -> None:
        try:
            self._tx([("INSERT OR IGNORE INTO warnings VALUES (?, ?)", (message, self.leg))])
        except sqlite3.Error as exc:  # the warning was printed; the report may lack it
            log.warning("cannot keep a warning in the checkpoint: %s", exc)

    def note_follow(self, facts: dict[str, Any]) -> None:
        """--follow: how far behind the load is, for `backfill status` (meta `follow`).
        Queued like a warning; a failure only leaves `status` with older figures."""
        self._pool.submit(self._note_follow, json.dumps(facts, sort_keys=True))

    def _note_follow(self, text: str) -> None:
        try:
            self._tx([("INSERT OR REPLACE INTO meta VALUES ('follow', ?)", (text,))])
        except sqlite3.Error as exc:
            log.warning("cannot keep the follow figures in the checkpoint: %s", exc)

    # -- reading -------------------------------------------------------------------------

    async def warnings(self) -> list[str]:
        """Every leg's warnings, each once, in the order they first appeared."""
        return await self._call(read_warnings, self._require())

    async def totals(self) -> Totals:
        return await self._call(read_totals, self._require())

    async def ambiguous_ranges(self) -> list[dict[str, Any]]:
        return await self._call(read_ambiguous, self._require())


MERGED_KEY = "merged_batches"  # meta: acknowledged rows folded into their neighbours


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
