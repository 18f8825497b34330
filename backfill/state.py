"""Operations on a state dir as a whole: start over, and tell what it holds."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

from backfill.checkpoint import (
    DB_NAME,
    LOCK_NAME,
    Checkpoint,
    Totals,
    open_readonly,
    read_ambiguous,
    read_totals,
    read_warnings,
)
from backfill.config import Settings
from backfill.errors import UsageError
from backfill.progress import plural, rehearsal_note

# flag -> the subdir of the state dir that holds a rehearsal's own checkpoint
REHEARSAL_DIRS = {"dry-run": "dry-run", "server-dry-run": "server-dry-run"}


def reset_state(settings: Settings) -> None:
    """Discards the checkpoint; the old dead-letter file is kept aside, never deleted.

    Nothing that marks an earlier run stays behind (the lock, an empty dead-letter file), so
    the run that follows, or a later one if this one fails to start, is a first run."""
    state_dir = Path(settings.state_dir)
    with Checkpoint.exclusive(state_dir):  # refused while another process uses the dir
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_dir / f"{DB_NAME}{suffix}")
        dlq = settings.dead_letter_path
        if dlq.exists() and dlq.stat().st_size:
            dlq.rename(dlq.with_name(f"{dlq.name}.{time.strftime('%Y%m%d-%H%M%S')}"))
        for leftover in (dlq, state_dir / LOCK_NAME):  # an empty dead-letter file; the lock
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def status_text(state_dir: Path) -> str:
    """What the checkpoint holds. Only reads: a damaged or unreadable one is a message."""
    try:
        db = open_readonly(state_dir)
        try:
            facts = _read(db)
        finally:
            db.close()
    except OSError as exc:
        raise UsageError(f"cannot read state dir {state_dir}: {exc.strerror or exc}") from None
    except UsageError as exc:
        raise UsageError(f"{exc}{_rehearsals(state_dir)}") from None
    except sqlite3.Error as exc:
        raise UsageError(
            f"cannot read the checkpoint {state_dir / DB_NAME} ({exc}): it is damaged, "
            "unreadable or not a checkpoint"
        ) from None
    return "\n".join(_lines(state_dir, facts))


class _Facts(NamedTuple):
    totals: Totals
    ambiguous: list[dict[str, Any]]
    files: list[tuple[str, int | None, str | None]]
    done: int
    inflight: int
    meta: dict[str, str]
    last: tuple[int | None, str | None] | None
    warnings: list[str]


def _read(db: sqlite3.Connection) -> _Facts:
    files = db.execute("SELECT path, lines, warning FROM files ORDER BY path").fetchall()
    covered = dict(
        db.execute(
            "SELECT f.path, MAX(b.end_line) FROM batches b JOIN files f ON f.id = b.file_id "
            "WHERE b.state IN ('acked','skipped') GROUP BY f.path"
        ).fetchall()
    )
    done = sum(
        1
        for path, lines, _ in files
        if lines is not None and (lines == 0 or covered.get(path, -1) >= lines)
    )
    return _Facts(
        read_totals(db),
        read_ambiguous(db),
        files,
        done,
        db.execute("SELECT COUNT(*) FROM batches WHERE state='inflight'").fetchone()[0],
        dict(db.execute("SELECT key, value FROM meta").fetchall()),
        db.execute("SELECT exit_code, error FROM legs ORDER BY id DESC LIMIT 1").fetchone(),
        read_warnings(db) or [f"{path}: {warning}" for path, _, warning in files if warning],
    )


def _lines(state_dir: Path, facts: _Facts) -> list[str]:
    t, settings = facts.totals, json.loads(facts.meta.get("settings", "{}"))
    out = [f"state dir:          {state_dir}", f"kind:               {settings.get('kind', '?')}"]
    rehearsal = settings.get("rehearsal")
    if rehearsal:
        out.append(str(rehearsal_note(rehearsal == "dry-run", True)))
    records = sum(a["records"] for a in facts.ambiguous)
    out += [
        f"files:              {facts.done} done of {len(facts.files)} known",
        f"records read:       {t.records_read:,}",
        f"records accepted:   {t.records_accepted:,}",
        f"invalid (dead-lettered): {t.records_invalid:,}",
        f"rejected by server: {t.records_rejected_by_server:,}",
        f"batches in flight at the last stop (ambiguous on resume): {facts.inflight}",
        f"ambiguous batches so far: {len(facts.ambiguous)} ({plural(records, 'record')})",
        f"legs:               {t.legs}, {t.duration_s:,.1f} s in all",
    ]
    completed = False
    if facts.last is not None:
        code, error = facts.last
        completed = code == 0 and facts.done == len(facts.files)
        state = "running or killed" if code is None else f"exit {code}"
        out.append(f"last leg:           {state}" + (f": {error}" if error else ""))
    out += [f"warning: {warning}" for warning in facts.warnings]
    command = facts.meta.get("command")
    if completed:
        out.append("load:               completed; the same command picks up new files")
        out.append(f"last command:       {command}" if command else "")
    elif command:
        out.append(f"to continue:        {command}")
    return [line for line in out if line]


def _rehearsals(state_dir: Path) -> str:
    found = [state_dir / d for d in REHEARSAL_DIRS.values() if (state_dir / d / DB_NAME).exists()]
    return "".join(f"; a rehearsal's checkpoint is in {d}" for d in found)
