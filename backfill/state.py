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
    read_settled,
    read_totals,
    read_warnings,
)
from backfill.config import Settings
from backfill.errors import UsageError, run_status
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


def status_text(state_dir: Path, as_json: bool = False) -> str:
    """What the checkpoint holds, or each checkpoint of a state root that shards or worker
    processes share, and their total. Only reads: a damaged or unreadable one is a message."""
    parts = [] if (state_dir / DB_NAME).exists() else _parts(state_dir)
    if not parts:
        facts = _facts(state_dir)
        if as_json:
            return json.dumps({**_summary(state_dir, facts), "shards": []}, indent=2)
        return "\n".join(_lines(state_dir, facts))
    summaries = [_summary(path, _facts(path)) for path in parts]
    total = _total(summaries)
    if as_json:
        return json.dumps({**total, "state_dir": str(state_dir), "shards": summaries}, indent=2)
    return "\n".join(_root_lines(state_dir, summaries, total))


def _parts(root: Path) -> list[Path]:
    """The checkpoints one level below a state root (shards), rehearsals left out."""
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []  # said by _facts, with the usual message
    return [
        p for p in children if p.name not in REHEARSAL_DIRS.values() and (p / DB_NAME).is_file()
    ]


def _facts(state_dir: Path) -> _Facts:
    try:
        db = open_readonly(state_dir)
        try:
            return _read(db)
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


# the numbers of a summary that add up over shards (duration_s: the longest, they run at once)
SUMMED = (
    "records_read",
    "records_valid",
    "records_invalid",
    "records_filtered",
    "records_accepted",
    "records_rejected_by_server",
    "records_assumed_delivered",
    "possibly_duplicated",
    "batches_sent",
    "batches_acknowledged",
    "batches_in_flight",
    "retries",
    "legs",
    "files",
    "files_done",
)


def _summary(state_dir: Path, facts: _Facts) -> dict[str, Any]:
    """One checkpoint in the report's terms (the same keys as `backfill run --report`)."""
    t, settings = facts.totals, json.loads(facts.meta.get("settings", "{}"))
    code, error = facts.last if facts.last is not None else (None, None)
    return {
        "name": state_dir.name,
        "state_dir": str(state_dir),
        "kind": settings.get("kind"),
        "status": run_status(code, all_done=facts.done == len(facts.files)),
        "exit_code": code,
        "error": error,
        "records_read": t.records_read,
        "records_valid": t.records_valid,
        "records_invalid": t.records_invalid,
        "records_filtered": t.records_filtered,
        "records_accepted": t.records_accepted,
        "records_rejected_by_server": t.records_rejected_by_server,
        "records_assumed_delivered": t.records_assumed_delivered,
        "possibly_duplicated": t.possibly_duplicated,
        "batches_sent": t.requests,
        "batches_acknowledged": t.batches_acked,
        "batches_in_flight": facts.inflight,
        "retries": t.retries,
        "duration_s": round(t.duration_s, 3),
        "legs": t.legs,
        "files": len(facts.files),
        "files_done": facts.done,
        "command": facts.meta.get("command"),
        "warnings": facts.warnings,
        "follow": json.loads(facts.meta["follow"]) if "follow" in facts.meta else None,
    }


def _total(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {key: sum(s[key] for s in summaries) for key in SUMMED}
    total["duration_s"] = max(s["duration_s"] for s in summaries)
    kinds = {s["kind"] for s in summaries}
    total["kind"] = kinds.pop() if len(kinds) == 1 else sorted(str(k) for k in kinds)
    statuses = {s["status"] for s in summaries}
    total["status"] = statuses.pop() if len(statuses) == 1 else "mixed"
    failed = [s["exit_code"] for s in summaries if s["exit_code"]]
    total["exit_code"] = failed[0] if failed else 0
    total["warnings"] = [f"{s['name']}: {w}" for s in summaries for w in s["warnings"]]
    return total


def _root_lines(root: Path, summaries: list[dict[str, Any]], total: dict[str, Any]) -> list[str]:
    out = [f"state root:         {root} ({plural(len(summaries), 'checkpoint')})"]
    width = max(len("total"), *(len(s["name"]) for s in summaries)) + 1
    for s in [*summaries, {**total, "name": "total"}]:
        out.append(
            f"{s['name'] + ':':<{width}} {s['status']}; files {s['files_done']} done of "
            f"{s['files']}; read {s['records_read']:,}, accepted {s['records_accepted']:,}, "
            f"invalid {s['records_invalid']:,}, rejected {s['records_rejected_by_server']:,}, "
            f"possibly duplicated {s['possibly_duplicated']:,}; in flight at the last stop "
            f"{s['batches_in_flight']}"
        )
    for s in summaries:
        if s["status"] != "completed" and s["command"]:
            out.append(f"to continue {s['name']}: {s['command']}")
    out += [f"warning: {warning}" for warning in total["warnings"]]
    return out


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
    done = sum(
        1 for _, _, lines, settled in read_settled(db) if lines is not None and settled >= lines
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
    if "follow" in facts.meta:
        out.append(_follow_line(json.loads(facts.meta["follow"]), facts.last))
    out += [f"warning: {warning}" for warning in facts.warnings]
    command = facts.meta.get("command")
    if completed:
        out.append("load:               completed; the same command picks up new files")
        out.append(f"last command:       {command}" if command else "")
    elif command:
        out.append(f"to continue:        {command}")
    return [line for line in out if line]


def _follow_line(follow: dict[str, Any], last: tuple[int | None, str | None] | None) -> str:
    """--follow: whether the load is following, and how far behind it was at the last look."""
    if last is not None and last[0] is not None:
        return f"following:          stopped (exit {last[0]}); the same command follows again"
    ago = max(0.0, time.time() - float(follow.get("updated") or 0))
    age = follow.get("newest_record_age_s")
    newest = "none yet" if age is None else f"{age:,.1f} s old"
    state = "yes" if follow.get("following") and ago < 60 else "no news (killed?)"
    return (
        f"following:          {state} (figures of {ago:,.0f} s ago): "
        f"{plural(int(follow.get('files_followed') or 0), 'file')} followed, newest record "
        f"acknowledged {newest}, {plural(int(follow.get('records_waiting') or 0), 'record')} "
        f"waiting, {int(follow.get('unread_bytes') or 0):,} bytes unread"
    )


def _rehearsals(state_dir: Path) -> str:
    found = [state_dir / d for d in REHEARSAL_DIRS.values() if (state_dir / d / DB_NAME).exists()]
    return "".join(f"; a rehearsal's checkpoint is in {d}" for d in found)
