"""Wiring the pipeline: reader -> bounded queue -> N workers -> checkpoint, and shutdown.

    reader task ──Batch──> asyncio.Queue(maxsize=concurrency) ──> worker x concurrency
      (read, validate,                                            (inflight, POST with retry,
       batch; one file                                             split/drop on 413/422,
       after another)                                              dead letters, acked)

Memory is bounded by `2 x concurrency` batches. Every task is owned by one TaskGroup.
A stop (signal, fatal answer, too many invalid records) stops the reader at once, lets
requests in flight finish for `drain_timeout` seconds, then cancels them; whatever was
cancelled stays `inflight` in the checkpoint and is handled as ambiguous on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import msgspec

from backfill import __version__
from backfill.batching import Batch, BatchBuilder, Rejected
from backfill.catalog import CatalogMarks, CatalogPlan, prescan
from backfill.checkpoint import AmbiguousRange, Checkpoint, FileState, Totals
from backfill.client import Accepted, Answer, Fatal, MisoClient, Retryable, SchemaRejected, TooLarge
from backfill.config import Secret, Settings
from backfill.deadletter import DeadLetterFile, entries_in
from backfill.errors import (
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    BackfillError,
    InputUnreadable,
    NeedsUser,
    RetriesExhausted,
    TooManyInvalid,
    UsageError,
)
from backfill.ids import IdLines, id_check
from backfill.mapping import build_transform
from backfill.progress import LegStats, Progress
from backfill.retry import RetryPolicy
from backfill.schema import RecordValidator
from backfill.sources import BlockTransform, Fingerprint, discover, fingerprint, read_blocks
from backfill.targets import ID_FIELD, target_for

log = logging.getLogger("backfill")

TASK_POLLS = 10  # GETs of a task status before its errors are taken as unknown


@dataclass(slots=True)
class Delivery:
    """What happened to one batch at the API."""

    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    ambiguous: int = 0  # attempts that failed after the request may have been stored


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
        self._done = asyncio.Event()
        self._drain_timer: asyncio.TimerHandle | None = None

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Runs one leg of the load and returns the report of the whole load."""
        paths = discover(self.s.inputs)
        prints = await asyncio.to_thread(lambda: [(p, _fingerprint(p)) for p in paths])
        self._paths = {p: i for i, p in enumerate(paths)}
        if self.s.kind != "interactions" and self.s.operation == "upload":
            id_field = ID_FIELD[self.s.kind]
            self._catalog = await prescan(paths, id_field, self.s.max_line_bytes, self._transform)
        cp = await Checkpoint.open(Path(self.s.state_dir))
        try:
            return await self._run_leg(cp, prints)
        finally:
            await cp.close()

    async def _run_leg(self, cp: Checkpoint, prints: list[Any]) -> dict[str, Any]:
        current = self._settings_fingerprint()
        previous = await cp.start_leg(current, self.command)
        changed = sorted(k for k in current if previous and previous.get(k) != current[k])
        if changed:
            self._warn(
                f"settings changed since the last leg ({', '.join(changed)}): acknowledged "
                "records stay as they were sent; the rest follows the new settings"
            )
        files = await cp.register_files(prints, self.s.force)
        sources = {f.id: str(f.path) for f in files}
        stopped = await cp.take_ambiguous(self.s.ambiguous, sources)
        ambiguous = [a for a in stopped if a.sent]
        reread = stopped if self.s.ambiguous == "resend" else [a for a in stopped if not a.sent]
        await cp.plan_files(files, reread)
        self._announce_resume(files, ambiguous)
        suppress = self._suppressed(files) if reread or cp.previous_leg_crashed else set()
        self._dlq = DeadLetterFile(self.s.dead_letter_path, suppress)
        self._cp = cp
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
        await cp.end_leg(self.exit_code, self.error, self._leg_counts())
        return self._report(await cp.totals(), await cp.ambiguous_ranges())

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
        }

    def _announce_resume(self, files: list[FileState], ambiguous: list[AmbiguousRange]) -> None:
        done = sum(f.done for f in files)
        started = sum(1 for f in files if not f.done and (f.start_line or f.plan.skip))
        if not (done or started or ambiguous):
            return
        what = "re-sending" if self.s.ambiguous == "resend" else "assuming delivered"
        lines = [f"resuming: {done} of {len(files)} files done, {started} partly done"]
        if ambiguous:
            records = sum(a.records for a in ambiguous)
            lines.append(
                f"resuming: {len(ambiguous)} batches ({records} records) were in flight at the "
                f"last stop and are ambiguous; {what} them (--ambiguous)"
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
        connector = aiohttp.TCPConnector(limit=self.s.concurrency, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(
            total=self.s.request_timeout, sock_connect=self.s.connect_timeout
        )
        handlers = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
        for sig, code in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, code)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                self._client = MisoClient(
                    session,
                    self.s.endpoint,
                    self._target.path,
                    self.secret,
                    method=self._target.method,
                    key_in_query=self.s.key_in_query,
                    server_dry_run=self.s.server_dry_run,
                )
                async with asyncio.TaskGroup() as tg:
                    self._reader = tg.create_task(self._read(files))
                    self._workers = [
                        tg.create_task(self._work()) for _ in range(self.s.concurrency)
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
        print(f"warning: {message}", file=self.out)

    async def _submit(self, batch: Batch) -> None:
        self.stats.records_read += batch.lines_read
        self.stats.records_invalid += len(batch.invalid)
        self._check_invalid_ratio()
        if batch.records:
            await self._queue.put(batch)
            return
        self._dlq.write(batch.source, batch.invalid)  # nothing to send: settle it here
        await self._cp.mark_acked(*self._row(batch), (0, 0, 0, 0), leg=self._leg_counts())

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
                f"does not look like Miso {self.s.kind} records. See {self.s.dead_letter_path}; "
                "rerun with --max-invalid-ratio 1 to load the valid ones anyway"
            )

    @staticmethod
    def _row(batch: Batch) -> tuple[tuple[int, int], tuple[int, int, int], tuple[int, int, int]]:
        return (
            batch.key,
            (batch.end_line, batch.start_offset, batch.end_offset),
            (len(batch.records), len(batch.invalid), batch.filtered),
        )

    # -- workers -------------------------------------------------------------------------

    async def _work(self) -> None:
        while (batch := await self._queue.get()) is not None:
            try:
                await self._deliver(batch)
            except BackfillError as exc:
                self._fail(exc)
                return

    async def _deliver(self, batch: Batch) -> None:
        self._dlq.write(batch.source, batch.invalid)
        key, span, counts = self._row(batch)
        await self._cp.mark_inflight(key, span, counts)
        self.stats.in_flight += 1
        d = Delivery()
        try:
            await self._send(batch, d)
        except NeedsUser:
            if not (d.accepted or d.ambiguous):  # every answer was a refusal: nothing stored
                await self._cp.mark_unsent(key)
            raise
        finally:
            self.stats.in_flight -= 1
        self._dlq.write(batch.source, d.rejected)
        if d.rejected or batch.invalid:
            self._dlq.sync()
        outcome = (d.accepted, len(d.rejected), d.requests, d.retries)
        await self._cp.mark_acked(
            key, span, counts, outcome, d.accepted * d.ambiguous, leg=self._leg_counts()
        )
        self.stats.records_accepted += d.accepted
        self.stats.records_rejected += len(d.rejected)

    async def _send(self, batch: Batch, d: Delivery) -> None:
        """Delivers every record of the batch or accounts for it as rejected.

        422 drops exactly the records the answer names and re-sends the rest (bisecting when
        the answer names none); 413 splits in halves; a record alone that still fails is
        rejected with the server's words.
        """
        parts = [(batch.records, batch.record_lines)]
        while parts:
            records, lines = parts.pop()
            answer = await self._post(records, d)
            if isinstance(answer, Accepted):
                if answer.task_id and self.s.wait_tasks:
                    answer = Accepted(await self._task_errors(answer), answer.task_id)
                for i, message in answer.errors.items():
                    if 0 <= i < len(records):
                        d.rejected.append(Rejected(lines[i], message, records[i], "server"))
                d.accepted += len(records) - len(answer.errors)
            elif isinstance(answer, SchemaRejected) and _named_all(answer, len(records)):
                keep = [i for i in range(len(records)) if i not in answer.errors]
                for i, message in answer.errors.items():
                    d.rejected.append(Rejected(lines[i], message, records[i], "server"))
                if keep:
                    parts.append(([records[i] for i in keep], [lines[i] for i in keep]))
            elif isinstance(answer, SchemaRejected | TooLarge):
                if len(records) == 1:
                    reason = (
                        f"rejected by the server: {answer.message}"
                        if isinstance(answer, SchemaRejected)
                        else "the record alone is too large for the server (HTTP 413)"
                    )
                    d.rejected.append(Rejected(lines[0], reason, records[0], "server"))
                else:
                    half = len(records) // 2
                    parts.append((records[half:], lines[half:]))
                    parts.append((records[:half], lines[:half]))
            elif isinstance(answer, Fatal):
                raise answer.error

    async def _task_errors(self, answer: Accepted) -> dict[int, str]:
        """--wait-tasks: the upload's deferred per-record errors, merged with its own."""
        assert answer.task_id is not None
        for attempt in range(1, TASK_POLLS + 1):
            errors = await self._client.task_errors(self.s.kind, answer.task_id)
            if errors is not None:
                return {**errors, **answer.errors}
            await asyncio.sleep(self._policy.delay(attempt))
        self._warn(f"task {answer.task_id}: status unknown after {TASK_POLLS} tries")
        return answer.errors

    async def _post(self, records: list[bytes], d: Delivery) -> Answer:
        """One part, with retries for what is retryable."""
        if self.s.dry_run:
            d.requests += 1
            self.stats.requests += 1
            return Accepted()
        body = self._target.body(records)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            d.requests += 1
            self.stats.requests += 1
            answer = await self._client.post(body)
            if not isinstance(answer, Retryable):
                return answer
            delay = self._policy.delay(attempt, answer.retry_after)
            if self._policy.gives_up(attempt, started, delay):
                raise RetriesExhausted(
                    f"gave up after {attempt} attempts in {time.monotonic() - started:.0f} s; "
                    f"last answer: {answer.reason} from {self._client.url}. The run is "
                    "resumable: rerun the same command when the API is reachable"
                )
            d.retries += 1
            d.ambiguous += answer.ambiguous
            self.stats.retries += 1
            log.info("retrying in %.1f s: %s", delay, answer.reason)
            await asyncio.sleep(delay)

    # -- report --------------------------------------------------------------------------

    def _report(self, totals: Totals, ambiguous: list[dict[str, Any]]) -> dict[str, Any]:
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
            "state_dir": self.s.state_dir,
            "dead_letter": str(self.s.dead_letter_path),
            "warnings": self.warnings,
            "error": self.error,
        }
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


def _named_all(answer: SchemaRejected, size: int) -> bool:
    return bool(answer.errors) and all(0 <= i < size for i in answer.errors)
