"""The legs of a load (each run of the command on one state dir) and what they leave for the
report: settings, warnings, --follow figures."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from backfill.checkpoint.reading import Totals, read_ambiguous, read_totals, read_warnings
from backfill.checkpoint.store import Store
from backfill.errors import UsageError

log = logging.getLogger("backfill")


class Legs(Store):
    """The `legs`, `warnings` and `meta` tables."""

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

    async def warnings(self) -> list[str]:
        """Every leg's warnings, each once, in the order they first appeared."""
        return await self._call(read_warnings, self._require())

    async def totals(self) -> Totals:
        return await self._call(read_totals, self._require())

    async def ambiguous_ranges(self) -> list[dict[str, Any]]:
        return await self._call(read_ambiguous, self._require())
