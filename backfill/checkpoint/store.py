"""The checkpoint's SQLite database: its tables, its lock, the one thread its SQL runs on.

One process owns a state dir at a time (flock). Every write is one transaction, fsync'd
(synchronous=FULL survives power loss), and runs on a dedicated thread so that an fsync never
stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from backfill.errors import (
    BackfillError,
    CheckpointLost,
    StateLocked,
    StateUnwritable,
    UsageError,
)

T = TypeVar("T")
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
MERGED_KEY = "merged_batches"  # meta: acknowledged rows folded into their neighbours


class Store:
    """The connection and its thread; the checkpoint's parts add their SQL on top."""

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
