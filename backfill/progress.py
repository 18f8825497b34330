"""What the user sees: a live line on a terminal (a log line elsewhere) and the final report."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import msgspec


@dataclass(slots=True)
class LegStats:
    """Counters of this leg, updated by the engine (no per-record work: per block or batch)."""

    bytes_total: int = 0  # input bytes (as stored) of every file of the run
    bytes_done: int = 0  # of which already acknowledged before this leg or read in it
    records_read: int = 0
    records_invalid: int = 0
    records_filtered: int = 0
    records_accepted: int = 0
    records_rejected: int = 0
    requests: int = 0
    retries: int = 0
    in_flight: int = 0
    started: float = 0.0


def plural(n: int, word: str, words: str = "") -> str:
    """The count and the word that agrees with it: "1 batch", "2 batches"."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


def _clock(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Renders LegStats every `interval` seconds: `\\r`-updated on a TTY, plain lines otherwise.

    The share and the ETA follow what the API acknowledged, not what was read: with a slow
    API the reader runs ahead by up to `2 x concurrency` batches, which is not progress.
    """

    def __init__(
        self, stats: LegStats, mode: str, interval: float, out: TextIO = sys.stderr
    ) -> None:
        tty = out.isatty()
        self.mode = ("bar" if tty else "log") if mode == "auto" else mode
        self.interval = interval or (1.0 if self.mode == "bar" else 10.0)
        self.stats, self.out = stats, out
        self._bytes_at_start = stats.bytes_done
        # the current concurrency limit (it moves with --concurrency auto), once sending
        self.limit: Callable[[], int] | None = None
        # --follow: the lag (newest record sent, records waiting) instead of a share and ETA
        self.lag: Callable[[], str] | None = None

    def line(self, now: float | None = None) -> str:
        s = self.stats
        elapsed = (time.monotonic() if now is None else now) - s.started
        if self.lag is not None:
            return (
                f"{self.lag()} | {s.records_accepted:,} accepted | "
                f"{_rate(s.records_read, elapsed):,.0f} rec/s | in flight {s.in_flight} | "
                f"retries {s.retries} | rejected {s.records_invalid + s.records_rejected}"
            )
        total = s.bytes_total or 1
        acked = self._bytes_acknowledged()
        mb = (s.bytes_done - self._bytes_at_start) / 1e6
        return (
            f"{100.0 * acked / total:5.1f}% acknowledged ({100.0 * s.bytes_done / total:.1f}% "
            f"read) | {s.records_accepted:,} accepted | "
            f"{_rate(s.records_read, elapsed):,.0f} rec/s | {_rate(mb, elapsed):.1f} MB/s | "
            f"ETA {self._eta(acked, elapsed)} | in flight {s.in_flight} | "
            f"retries {s.retries} | rejected {s.records_invalid + s.records_rejected}"
            + (f" | concurrency {self.limit()}" if self.limit is not None else "")
        )

    def _bytes_acknowledged(self) -> float:
        """Input bytes done before this leg, plus those read in it in the proportion of its
        valid records the API has answered for (invalid and filtered ones need no answer)."""
        s = self.stats
        valid = s.records_read - s.records_invalid - s.records_filtered
        answered = s.records_accepted + s.records_rejected
        share = min(1.0, answered / valid) if valid > 0 else 1.0
        return self._bytes_at_start + (s.bytes_done - self._bytes_at_start) * share

    def _eta(self, acked: float, elapsed: float) -> str:
        done = acked - self._bytes_at_start
        if done <= 0 or elapsed <= 0:
            return "--:--"
        return _clock((self.stats.bytes_total - acked) / (done / elapsed))

    def show(self) -> None:
        if self.mode == "off":
            return
        if self.mode == "bar":
            self.out.write("\r\x1b[2K" + self.line())
        else:
            self.out.write(f"progress: {self.line()}\n")
        self.out.flush()

    def done(self) -> None:
        if self.mode == "bar":
            self.out.write("\r\x1b[2K")
            self.out.flush()


REPORT_ROWS = [
    ("records_read", "records read"),
    ("records_valid", "valid"),
    ("records_invalid", "invalid (dead-lettered)"),
    ("records_filtered", "filtered (time window, mapping, superseded)"),
    ("records_superseded", "superseded by a newer version of the id"),
    ("records_accepted", "accepted by the API"),
    ("records_rejected_by_server", "rejected by the API (dead-lettered)"),
    ("records_assumed_delivered", "ambiguous, assumed delivered"),
    ("possibly_duplicated", "possibly duplicated (re-sent)"),
    ("batches_sent", "requests sent"),
    ("retries", "retries"),
    ("duration_s", "duration (s, all legs)"),
    ("records_per_s", "records/s (all legs)"),
]


def rehearsal_note(dry_run: bool, server_dry_run: bool) -> str | None:
    """The plain sentence a rehearsal's report, table and `status` carry."""
    if dry_run:
        return (
            "rehearsal (--dry-run): nothing was sent and nothing was stored; "
            "run without --dry-run to load the records"
        )
    if server_dry_run:
        return (
            "rehearsal (--server-dry-run): the API checked the records and stored nothing; "
            "run without --server-dry-run to load them (a rehearsal keeps its own checkpoint)"
        )
    return None


def render_report(report: dict[str, Any]) -> str:
    width = max(len(label) for _, label in REPORT_ROWS)
    head = f"backfill {report['status']} (exit {report['exit_code']})"
    lines = [head + (": a rehearsal, nothing was stored" if report.get("rehearsal") else "")]
    if report.get("note"):
        lines.append(f"  {report['note']}")
    for key, label in REPORT_ROWS:
        if key == "records_superseded" and report.get("kind") == "interactions":
            continue  # only a catalog keeps the newest version of an id
        value = report.get(key, 0)
        shown = f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
        lines.append(f"  {label:<{width}}  {shown:>14}")
    for key, value in (report.get("privacy") or {}).items():
        if isinstance(value, int):  # the findings by kind and field stay in the JSON report
            label = f"privacy: {key.replace('_', ' ')}"
            lines.append(f"  {label:<{width}}  {value:>14,}")
    lines.append(f"  {'dead-letter file':<{width}}  {report['dead_letter']}")
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    if report.get("resume_command"):
        lines.append(f"  to resume: {report['resume_command']}")
    return "\n".join(lines)


def write_report(path: str, report: dict[str, Any]) -> None:
    """Atomic: a reader never sees half a report."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
