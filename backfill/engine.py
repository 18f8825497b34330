"""Wiring the pipeline: reader -> bounded queue -> N workers -> checkpoint, and shutdown.

    reader task ──Batch──> asyncio.Queue(maxsize=concurrency) ──> worker x concurrency
      (read, validate,                                            (inflight, the batch's
       batch; one file                                             journey in delivery.py,
       after another)                                              dead letters, acked)

Memory is bounded by `2 x concurrency` batches. Every task is owned by one TaskGroup.
A stop (signal, fatal answer, too many invalid records) stops the reader and every retry
backoff at once, lets requests in flight finish for `drain_timeout` seconds, then cancels
them; whatever was cancelled stays `inflight` in the checkpoint and is handled as ambiguous
on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec

from backfill import __version__
from backfill.batching import Batch, BatchBuilder
from backfill.catalog import CatalogMarks, CatalogPlan, prescan
from backfill.checkpoint import AmbiguousRange, Checkpoint, FileState, Totals
from backfill.config import Secret, Settings
from backfill.deadletter import DeadLetterFile, entries_in
from backfill.delivery import Delivery, Sender, open_sender
from backfill.errors import (
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Abandoned,
    BackfillError,
    InputUnreadable,
    NeedsUser,
    StateUnwritable,
    TooManyInvalid,
    UsageError,
)
from backfill.hints import SAMPLES, hint
from backfill.ids import IdLines, id_check
from backfill.mapping import build_transform
from backfill.progress import LegStats, Progress, plural, rehearsal_note
from backfill.retry import RetryPolicy
from backfill.schema import KINDS, RecordValidator
from backfill.shards import owned_by
from backfill.sources import (
    BlockTransform,
    Fingerprint,
    LocalFile,
    find_sources,
    fingerprint,
    read_blocks,
)
from backfill.targets import target_for

log = logging.getLogger("backfill")


class Engine:
    def __init__(
        self, settings: Settings, secret: Secret, *, command: str = "", out: TextIO = sys.stderr
    ) -> None:
        self.s = settings
        self.secret = secret
        self.command = command
        self.out = out
        self.stats = LegStats()
        self.warnings: list[str] = []
        self.exit_code = EXIT_OK
        self.error: str | None = None
        self._stopping = False
        self._policy = RetryPolicy(
            settings.max_attempts,
            settings.max_retry_seconds,
            settings.backoff_initial,
            settings.backoff_max,
        )
        self._target = target_for(settings.kind, settings.operation)
        self._transform: BlockTransform | None = build_transform(settings)
        if settings.operation == "delete":
            self._check = id_check(settings.kind)
            self._transform = IdLines(settings.kind)
        else:
            self._check = RecordValidator(settings.kind, settings.rules).check
        self._catalog: CatalogPlan | None = None
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=settings.concurrency)
        self._reader: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._ratio_checked = False
        self._cp = Checkpoint(Path(settings.state_dir))
        self._dlq = DeadLetterFile(settings.dead_letter_path)
        self._paths: dict[Path, int] = {}  # input file -> its index in sorted order
        self._never_loaded: list[str] = []  # files gone from the inputs, not loaded whole
        self._samples: list[bytes] = []  # the leg's first invalid lines, to guess a cause from
        self._done = asyncio.Event()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._sender: Sender | None = None

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Runs one leg of the load and returns the report of the whole load."""
        owned = owned_by(find_sources(self.s.inputs), self.s.shard)
        paths = [s.path for s in owned if isinstance(s, LocalFile)]
        if self.s.shard is not None and not paths:
            print(self.s.shard.nothing_to_do, file=self.out)
        prints = await asyncio.to_thread(lambda: [(p, _fingerprint(p)) for p in paths])
        self._paths = {p: i for i, p in enumerate(paths)}
        if self.s.kind != "interactions" and self.s.operation == "upload":
            id_field = KINDS[self.s.kind].id_field
            self._catalog = await prescan(paths, id_field, self.s.max_line_bytes, self._transform)
        await self._cp.connect(
            fresh=self.s.restart or self.s.dry_run,  # the command has just reset it
            dead_letter=self.s.dead_letter_path,
        )
        try:
            return await self._run_leg(prints)
        finally:
            await self._cp.close()

    async def _run_leg(self, prints: list[tuple[Path, Fingerprint]]) -> dict[str, Any]:
        files = await self._start_leg(prints)
        self.stats.bytes_total = sum(fp.size for _, fp in prints)
        self.stats.bytes_done = sum(
            fp.size for (_, fp), f in zip(prints, files, strict=True) if f.done
        )
        self.stats.started = time.monotonic()
        try:
            await self._pipeline(files)
        except BackfillError as exc:
            self._fail(exc)
        finally:
            self._dlq.close()
        cp = self._cp
        self._check_all_invalid(await cp.totals())
        try:
            await cp.end_leg(self.exit_code, self.error, self._leg_counts())
        except StateUnwritable as exc:  # the report is still owed; the next leg sees a crash
            if self.exit_code == EXIT_OK:
                self.exit_code, self.error = exc.exit_code, str(exc)
        return self._report(await cp.totals(), await cp.ambiguous_ranges(), await cp.warnings())

    async def _start_leg(self, prints: list[tuple[Path, Fingerprint]]) -> list[FileState]:
        """Records the leg, matches the inputs with the checkpoint and plans the resume."""
        cp = self._cp
        current = self._settings_fingerprint()
        self._warn_changed(await cp.start_leg(current, self.command), current)
        files = await cp.register_files(prints, self.s.force)
        self._warn_vanished(await cp.vanished(files))
        sources = {f.id: str(f.path) for f in files}
        stopped = await cp.take_ambiguous(self.s.ambiguous, sources)
        ambiguous = [a for a in stopped if a.sent]
        reread = stopped if self.s.ambiguous == "resend" else [a for a in stopped if not a.sent]
        await cp.plan_files(files, reread)
        self._announce_resume(files, ambiguous)
        suppress = self._suppressed(files) if reread or cp.previous_leg_crashed else set()
        self._dlq.open(suppress)
        return files

    def _warn_changed(self, previous: dict[str, Any] | None, current: dict[str, Any]) -> None:
        # a key the previous leg's version did not record is not a change
        changed = sorted(
            k for k in current if previous and k in previous and previous[k] != current[k]
        )
        if previous and "endpoint" in changed:
            changed.remove("endpoint")
            self._warn(
                f"the endpoint changed since the last leg ({previous['endpoint']} -> "
                f"{current['endpoint']}): what earlier legs acknowledged went to the old one "
                "and is not sent to the new one; load another environment with its own "
                "--state-dir"
            )
        if changed:
            self._warn(
                f"settings changed since the last leg ({', '.join(changed)}): acknowledged "
                "records stay as they were sent; the rest follows the new settings"
            )

    def _warn_vanished(self, vanished: list[tuple[str, int | None, int]]) -> None:
        """A file an earlier leg read from but that this leg's inputs lack: what of it was
        not loaded never will be, unless it comes back."""
        for path, lines, settled in vanished:
            if lines is not None and settled >= lines:
                continue  # loaded whole: dropping it from the inputs is fine
            if lines is not None:
                left = f"{lines - settled:,} of its {plural(lines, 'line')} never loaded"
            elif settled:
                left = f"{plural(settled, 'line')} loaded, the rest never loaded"
            else:
                left = "never loaded"
            self._warn(f"{path}: gone from the inputs since an earlier leg; {left}")
            self._never_loaded.append(path)

    def _settings_fingerprint(self) -> dict[str, Any]:
        s = self.s
        return {
            "kind": self._target.name,
            "batch_size": s.effective_batch_size,
            "max_batch_bytes": s.max_batch_bytes,
            "rules": [s.allow_missing_timestamp, s.allow_anonymous, str(s.since), str(s.until)],
            "mapping": hashlib.sha256(
                msgspec.json.encode(s.mapping or {}, order="sorted")
            ).hexdigest()[:16],
            "version": __version__,
            "endpoint": s.endpoint,
            "rehearsal": "dry-run" if s.dry_run else "server-dry-run" if s.server_dry_run else "",
        }

    def _announce_resume(self, files: list[FileState], ambiguous: list[AmbiguousRange]) -> None:
        done = sum(f.done for f in files)
        started = sum(1 for f in files if not f.done and (f.start_line or f.plan.skip))
        if not (done or started or ambiguous):
            return
        lines = [f"resuming: {done} of {plural(len(files), 'file')} done, {started} partly done"]
        if ambiguous:
            records = sum(a.records for a in ambiguous)
            one = len(ambiguous) == 1
            what = "re-sending" if self.s.ambiguous == "resend" else "assuming delivered"
            lines.append(
                f"resuming: {plural(len(ambiguous), 'batch', 'batches')} "
                f"({plural(records, 'record')}) {'was' if one else 'were'} in flight at the "
                f"last stop and {'is' if one else 'are'} ambiguous; {what} "
                f"{'it' if one else 'them'} (--ambiguous)"
            )
        for line in lines:
            print(line, file=self.out)

    def _suppressed(self, files: list[FileState]) -> set[tuple[str, int]]:
        """Dead letters already written for lines this leg reads again (dead letters are
        written before their batch is marked in flight, so an unsettled range may have some)."""
        by_source = {str(f.path): f for f in files}

        def unsettled(source: str, line: int) -> bool:
            f = by_source.get(source)
            return f is not None and not f.settled(line - 1)

        return entries_in(self.s.dead_letter_path, unsettled)

    # -- pipeline and shutdown -------------------------------------------------------------

    async def _pipeline(self, files: list[FileState]) -> None:
        loop = asyncio.get_running_loop()
        progress = Progress(self.stats, self.s.progress, self.s.progress_interval, self.out)
        handlers = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
        for sig, code in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, code)
        sending = open_sender(
            self.s, self.secret, self._target, self._policy, meter=self.stats, warn=self._warn
        )
        try:
            async with sending as sender:
                self._sender = sender
                async with asyncio.TaskGroup() as tg:
                    self._reader = tg.create_task(self._read(files))
                    self._workers = [
                        tg.create_task(self._work(sender)) for _ in range(self.s.concurrency)
                    ]
                    tg.create_task(self._tick(progress))
                    await asyncio.wait(self._workers)
                    self._done.set()
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            for sig in handlers:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            progress.done()

    def _on_signal(self, code: int) -> None:
        if self._stopping:
            print("\nsecond signal: cancelling requests in flight", file=self.out)
            self._force_stop()
            return
        name = "SIGINT" if code == EXIT_SIGINT else "SIGTERM"
        print(
            f"\n{name}: stopping; waiting up to {self.s.drain_timeout:.0f} s for requests in "
            "flight (press Ctrl-C again to cancel them)",
            file=self.out,
        )
        self._stop(code, f"interrupted by {name}")
        if self._sender is not None:
            self._sender.stop()  # backoffs end now: a batch waiting in one is given up

    def _stop(self, code: int, error: str | None) -> None:
        """Stop reading now; workers finish what they hold, bounded by the drain timeout."""
        if self._stopping:
            return
        self._stopping = True
        self.exit_code, self.error = code, error
        if self._reader is not None:
            self._reader.cancel()
        while not self._queue.empty():
            self._queue.get_nowait()
        for _ in self._workers:
            self._queue.put_nowait(None)
        self._drain_timer = asyncio.get_running_loop().call_later(
            self.s.drain_timeout, self._force_stop
        )

    def _force_stop(self) -> None:
        for task in self._workers:
            task.cancel()

    def _fail(self, exc: BackfillError) -> None:
        message = self.secret.redact(str(exc))
        if not self._stopping:
            self._stop(exc.exit_code, message)
        elif self.exit_code in (EXIT_OK,):
            self.exit_code, self.error = exc.exit_code, message

    async def _tick(self, progress: Progress) -> None:
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), progress.interval)
            if not self._done.is_set():
                progress.show()

    # -- reader --------------------------------------------------------------------------

    async def _read(self, files: list[FileState]) -> None:
        try:
            for f in files:
                if f.done:
                    continue
                await self._read_file(f)
        except TooManyInvalid as exc:
            # stop reading, but deliver what was read: its dead letters are then all written
            # and the report counts exactly the lines the message speaks of
            self.exit_code, self.error = exc.exit_code, self.secret.redact(str(exc))
        except BackfillError as exc:
            self._fail(exc)
            return
        for _ in self._workers:
            await self._queue.put(None)

    async def _read_file(self, f: FileState) -> None:
        source = str(f.path)
        builder = BatchBuilder(
            f.id,
            source,
            self._check,
            max_records=self.s.effective_batch_size,
            max_bytes=self.s.max_batch_bytes,
            envelope=self._target.envelope,
            plan=f.plan,
        )
        lines = f.start_line
        blocks = read_blocks(
            f.path,
            start_offset=f.start_offset,
            start_line=f.start_line,
            max_line_bytes=self.s.max_line_bytes,
        )
        if self._transform is not None:
            blocks = self._transform.blocks(f.path, blocks)
        if self._catalog is not None:
            blocks = CatalogMarks(self._catalog, self._file_index).blocks(f.path, blocks)
        try:
            async for block in blocks:
                self.stats.bytes_done += block.raw_bytes
                lines = block.first + len(block.lines)
                for batch in builder.feed(block):
                    await self._submit(batch)
                await asyncio.sleep(0)  # a block is ~1 MiB of validation: let requests run
        except OSError as exc:
            raise InputUnreadable(f"cannot read {source}: {exc.strerror or exc}") from None
        for batch in builder.finish():
            await self._submit(batch)
        warning = "; ".join(builder.warnings) or None
        if lines == 0 and warning is None:
            warning = "empty file: no records"
        if warning:
            self._warn(f"{source}: {warning}")
        await self._cp.mark_file_read(f.id, lines, warning)

    def _leg_counts(self) -> tuple[int, int]:
        return (self.stats.requests, self.stats.retries)

    def _file_index(self, path: Path) -> int:
        return self._paths[path]

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self._cp.note_warning(message)
        print(f"warning: {message}", file=self.out)

    async def _submit(self, batch: Batch) -> None:
        self.stats.records_read += batch.lines_read
        self.stats.records_invalid += len(batch.invalid)
        self.stats.records_filtered += batch.filtered
        if batch.invalid and len(self._samples) < SAMPLES:
            self._samples += [r.raw for r in batch.invalid[: SAMPLES - len(self._samples)]]
        if batch.records:
            await self._queue.put(batch)
        else:  # nothing to send: settle it here, its dead letters on disk first
            self._dlq.write(batch.source, batch.invalid)
            sync = self._dlq.sync if batch.invalid else None
            await self._cp.mark_acked(
                *self._row(batch), (0, 0, 0, 0), leg=self._leg_counts(), first=sync
            )
        self._check_invalid_ratio()

    def _check_invalid_ratio(self) -> None:
        s, window = self.stats, self.s.invalid_ratio_window
        if self._ratio_checked or s.records_read < window:
            return
        self._ratio_checked = True
        ratio = s.records_invalid / s.records_read
        if ratio > self.s.max_invalid_ratio:
            raise TooManyInvalid(
                f"{s.records_invalid:,} of the first {s.records_read:,} records are invalid "
                f"({ratio:.0%} > --max-invalid-ratio {self.s.max_invalid_ratio}): the input "
                f"does not look like Miso {self.s.kind} records{self._hint()}. See "
                f"{self.s.dead_letter_path}; rerun with --max-invalid-ratio 1 to load the "
                "valid ones anyway"
            )

    def _check_all_invalid(self, totals: Totals) -> None:
        """An input too small for the ratio window, and entirely invalid: nothing was
        loaded, which must not look like success."""
        if self.exit_code != EXIT_OK or self.s.max_invalid_ratio >= 1.0:
            return
        if not 0 < totals.records_invalid == totals.records_read:
            return
        n = totals.records_read
        what = "the only record read is" if n == 1 else f"all {n:,} records read are"
        self.exit_code = TooManyInvalid.exit_code
        self.error = (
            f"{what} invalid, so nothing was loaded{self._hint()}. See "
            f"{self.s.dead_letter_path} for each line's reason"
        )

    def _hint(self) -> str:
        text = hint(self.s.kind, self._samples, mapped=self._transform is not None)
        return f" ({text})" if text and self.s.operation == "upload" else ""

    @staticmethod
    def _row(batch: Batch) -> tuple[tuple[int, int], tuple[int, int, int], tuple[int, int, int]]:
        return (
            batch.key,
            (batch.end_line, batch.start_offset, batch.end_offset),
            (len(batch.records), len(batch.invalid), batch.filtered),
        )

    # -- workers -------------------------------------------------------------------------

    async def _work(self, sender: Sender) -> None:
        while (batch := await self._queue.get()) is not None:
            try:
                await self._deliver(batch, sender)
            except BackfillError as exc:
                self._fail(exc)
                return

    async def _deliver(self, batch: Batch, sender: Sender) -> None:
        self._dlq.write(batch.source, batch.invalid)
        key, span, counts = self._row(batch)
        await self._cp.mark_inflight(key, span, counts)
        self.stats.in_flight += 1
        d = Delivery()
        try:
            await sender.deliver(batch, d)
        except (NeedsUser, Abandoned, asyncio.CancelledError):
            if not d.maybe_stored:  # refused, or never connected: nothing was stored
                await asyncio.shield(self._cp.mark_unsent(key))
            raise
        finally:
            self.stats.in_flight -= 1
        self._dlq.write(batch.source, d.rejected)
        sync = self._dlq.sync if d.rejected or batch.invalid else None  # on the checkpoint thread
        outcome = (d.accepted, len(d.rejected), d.requests, d.retries)
        await self._cp.mark_acked(
            key,
            span,
            counts,
            outcome,
            d.accepted * d.ambiguous,
            leg=self._leg_counts(),
            first=sync,
        )
        self.stats.records_accepted += d.accepted
        self.stats.records_rejected += len(d.rejected)
        if d.stop is not None:  # recorded first: what the server took stays acknowledged
            raise d.stop

    # -- report --------------------------------------------------------------------------

    def _report(
        self, totals: Totals, ambiguous: list[dict[str, Any]], warnings: list[str]
    ) -> dict[str, Any]:
        status = {EXIT_OK: "completed", EXIT_SIGINT: "interrupted", EXIT_SIGTERM: "interrupted"}
        report: dict[str, Any] = {
            "status": status.get(self.exit_code, "stopped"),
            "exit_code": self.exit_code,
            "kind": self.s.kind,
            "records_read": totals.records_read,
            "records_valid": totals.records_valid,
            "records_invalid": totals.records_invalid,
            "records_filtered": totals.records_filtered,
            "records_superseded": self._catalog.superseded_count if self._catalog else 0,
            "records_accepted": totals.records_accepted,
            "records_rejected_by_server": totals.records_rejected_by_server,
            "records_assumed_delivered": totals.records_assumed_delivered,
            "possibly_duplicated": totals.possibly_duplicated,
            "batches_sent": totals.requests,
            "batches_acknowledged": totals.batches_acked,
            "retries": totals.retries,
            "duration_s": round(totals.duration_s, 3),
            "records_per_s": round(totals.records_read / totals.duration_s, 1)
            if totals.duration_s > 0
            else 0.0,
            "legs": totals.legs,
            "files": totals.files_total,
            "files_never_loaded": self._never_loaded,
            "ambiguous_batches": ambiguous,
            "this_leg": {
                "records_read": self.stats.records_read,
                "records_accepted": self.stats.records_accepted,
                "requests": self.stats.requests,
                "retries": self.stats.retries,
                "duration_s": round(time.monotonic() - self.stats.started, 3),
            },
            "endpoint": self._client_url(),
            "dry_run": self.s.dry_run,
            "server_dry_run": self.s.server_dry_run,
            "rehearsal": self.s.dry_run or self.s.server_dry_run,
            "state_dir": self.s.state_dir,
            "dead_letter": str(self.s.dead_letter_path),
            "warnings": warnings,  # of every leg
            "error": self.error,
        }
        note = rehearsal_note(self.s.dry_run, self.s.server_dry_run)
        if note:
            report["note"] = note
        if self.exit_code != EXIT_OK and self.command:
            report["resume_command"] = self.command
        return report

    def _client_url(self) -> str:
        return self.s.endpoint.rstrip("/") + self._target.path


def _fingerprint(path: Path) -> Fingerprint:
    try:
        return fingerprint(path)
    except OSError as exc:
        raise UsageError(f"cannot read input {path}: {exc.strerror or exc}") from None
