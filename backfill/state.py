"""Operations on a state dir as a whole: start over, and tell what it holds."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from backfill.checkpoint import DB_NAME, Checkpoint, open_readonly, read_ambiguous, read_totals
from backfill.config import Settings
from backfill.progress import rehearsal_note

# flag -> the subdir of the state dir that holds a rehearsal's own checkpoint
REHEARSAL_DIRS = {"dry-run": "dry-run", "server-dry-run": "server-dry-run"}


def reset_state(settings: Settings) -> None:
    """Discards the checkpoint; the old dead-letter file is kept aside, never deleted."""
    state_dir = Path(settings.state_dir)
    with Checkpoint.exclusive(state_dir):  # refused while another process uses the dir
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_dir / f"{DB_NAME}{suffix}")
        dlq = settings.dead_letter_path
        if dlq.exists() and dlq.stat().st_size:
            dlq.rename(dlq.with_name(f"{dlq.name}.{time.strftime('%Y%m%d-%H%M%S')}"))


def status_text(state_dir: Path) -> str:
    db = open_readonly(state_dir)
    try:
        t = read_totals(db)
        ambiguous = read_ambiguous(db)
        files = db.execute("SELECT path, lines, warning FROM files ORDER BY path").fetchall()
        covered = dict(
            db.execute(
                "SELECT file_id, MAX(end_line) FROM batches WHERE state IN ('acked','skipped') "
                "GROUP BY file_id"
            ).fetchall()
        )
        ids = dict(db.execute("SELECT path, id FROM files").fetchall())
        inflight = db.execute("SELECT COUNT(*) FROM batches WHERE state='inflight'").fetchone()[0]
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        last = db.execute("SELECT exit_code, error FROM legs ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    done = sum(
        1
        for path, lines, _ in files
        if lines is not None and (lines == 0 or covered.get(ids[path], -1) >= lines)
    )
    settings = json.loads(meta.get("settings", "{}"))
    out = [
        f"state dir:          {state_dir}",
        f"kind:               {settings.get('kind', '?')}",
    ]
    rehearsal = settings.get("rehearsal")
    if rehearsal:
        out.append(f"rehearsal:          {rehearsal_note(rehearsal == 'dry-run', True)}")
    out += [
        f"files:              {done} done of {len(files)} known",
        f"records read:       {t.records_read:,}",
        f"records accepted:   {t.records_accepted:,}",
        f"invalid (dead-lettered): {t.records_invalid:,}",
        f"rejected by server: {t.records_rejected_by_server:,}",
        f"batches in flight at the last stop (ambiguous on resume): {inflight}",
        f"ambiguous batches so far: {len(ambiguous)} "
        f"({sum(a['records'] for a in ambiguous):,} records)",
        f"legs:               {t.legs}, {t.duration_s:,.1f} s in all",
    ]
    if last is not None:
        code, error = last
        state = "running or killed" if code is None else f"exit {code}"
        out.append(f"last leg:           {state}" + (f": {error}" if error else ""))
    for path, _, warning in files:
        if warning:
            out.append(f"warning: {path}: {warning}")
    if meta.get("command"):
        out.append(f"to continue:        {meta['command']}")
    return "\n".join(out)
