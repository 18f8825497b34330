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

from pathlib import Path

from backfill.checkpoint.files import Files, FileState, Range
from backfill.checkpoint.ledger import NOTHING_SENT, AmbiguousRange, Ledger, Outcome
from backfill.checkpoint.legs import Legs
from backfill.checkpoint.reading import (
    Totals,
    open_readonly,
    read_ambiguous,
    read_settled,
    read_totals,
    read_warnings,
)
from backfill.checkpoint.store import CORE_TABLES, DB_NAME, LOCK_NAME, MERGED_KEY, SCHEMA, Store

__all__ = [
    "CORE_TABLES",
    "DB_NAME",
    "LOCK_NAME",
    "MERGED_KEY",
    "NOTHING_SENT",
    "SCHEMA",
    "AmbiguousRange",
    "Checkpoint",
    "FileState",
    "Outcome",
    "Range",
    "Store",
    "Totals",
    "open_readonly",
    "read_ambiguous",
    "read_settled",
    "read_totals",
    "read_warnings",
]


class Checkpoint(Legs, Files, Ledger):
    """Async facade; every method's SQL runs on the checkpoint thread."""

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
