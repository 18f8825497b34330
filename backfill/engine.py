"""Wiring the pipeline: reader -> bounded queue -> N workers -> checkpoint, and shutdown.

    reader task ──Batch──> asyncio.Queue(maxsize=concurrency) ──> worker x concurrency
      (read, validate,                                            (inflight, the batch's
       batch; one file                                             journey in delivery.py,
       after another)                                              dead letters, acked)

Memory is bounded by `2 x concurrency` batches (`--max-concurrency` with `--concurrency auto`:
`Settings.max_in_flight` workers, each holding one batch while it waits for a slot).
Every task is owned by one TaskGroup.
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
from collections.abc import AsyncGenerator
from math import nan
from pathlib import Path
from typing import Any, TextIO

import msgspec

from backfill import __version__
from backfill.batching import Batch, BatchBuilder
from backfill.catalog import CatalogMarks, CatalogPlan, prescan
from backfill.checkpoint import AmbiguousRange, Checkpoint, FileState, Outcome, Totals
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
    run_status,
)
from backfill.follow import Follower, follow_sources, grown
from backfill.hints import SAMPLES, hint
from backfill.ids import IdLines, id_check
from backfill.mapping import build_transform
from backfill.metrics import METRICS_INTERVAL, Metrics, MetricsEndpoint, export_textfile
from backfill.privacy import build_privacy
from backfill.progress import LegStats, Progress, plural, rehearsal_note
from backfill.retry import RetryPolicy
from backfill.schema import KINDS, RecordValidator
from backfill.shards import owned_by
from backfill.sources import (
    BlockTransform,
    Fingerprint,
    Source,
    Start,
    find_sources,
    open_blocks,
)
from backfill.targets import target_for
from backfill.waiting import wait_event

log = logging.getLogger("backfill")


class Engine:
    def __init__(
        self, settings: Settings, secret: Secret, *, command: str = "", out: TextIO = sys.stderr
    ) -> None:
        self.settings = settings
        self.secret = secret
        # first: a missing hash key is a usage error before anything is read, sent or stored
        self._privacy = build_privacy(settings.privacy, settings.kind, settings.operation)
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
        mapping = build_transform(settings)
        self._mapped = mapping is not None
        if settings.operation == "delete":
            self._check = id_check(settings.kind)
            mapping = IdLines(settings.kind)
        else:
            validator = RecordValidator(settings.kind, settings.rules)
            self._check = validator.check
        # between the reader and validation, in order (catalog marks join after the prescan)
        self._transforms: list[BlockTransform] = [mapping] if mapping is not None else []
        if self._privacy is not None:  # after mapping/IdLines: lines are Miso JSON by then
            self._transforms.append(self._privacy)
            if settings.kind == "interactions" and settings.operation == "upload":
                # the last transform: it validates, one decode serving both (issue 17)
                self._check = self._privacy.validate_with(validator)
        self._catalog: CatalogPlan | None = None
        self._queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=settings.max_in_flight)
        self._reader: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._ratio_checked = False
        self._cp = Checkpoint(Path(settings.state_dir), merge=settings.follow)
        self._dlq = DeadLetterFile(settings.dead_letter_path)
        self._index: dict[str, int] = {}  # a source's key -> its index in sorted order
        self._never_loaded: list[str] = []  # files gone from the inputs, not loaded whole
        self._samples: list[bytes] = []  # the leg's first invalid lines, to guess a cause from
        self._done = asyncio.Event()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._sender: Sender | None = None
        wanted = settings.metrics_port is not None or settings.metrics_textfile
        self.metrics: Metrics | None = Metrics() if wanted else None
        self._exporting = False  # the metrics textfile was written once: write it at exit
        self._follower: Follower | None = None
        if settings.follow:
            self._follower = Follower(
                settings, self._cp, self._transforms, self._builder, self._submit, self._warn
            )

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Runs one leg of the load and returns the report of the whole load."""
        settings = self.settings
        listed = follow_sources if settings.follow else find_sources
        sources = owned_by(listed(settings.inputs), settings.shard)
        if settings.shard is not None and not sources and not settings.follow:
            print(settings.shard.nothing_to_do, file=self.out)
        fingerprints = await asyncio.to_thread(
            lambda: [(source, _fingerprint(source)) for source in sources]
        )
        await self._plan_catalog(sources)
        await self._cp.connect(
            fresh=settings.restart or settings.dry_run,  # the command has just reset it
            dead_letter=settings.dead_letter_path,
        )
        try:
            return await self._run_leg(fingerprints)
        finally:
            await self._cp.close()

    async def _plan_catalog(self, sources: list[Source]) -> None:
        """Products and users: which line holds the newest version of each id."""
        settings = self.settings
        self._index = {source.key: i for i, source in enumerate(sources)}
        if settings.kind != "interactions" and settings.operation == "upload":
            id_field = KINDS[settings.kind].id_field
            self._catalog = await prescan(  # the raw ids dedupe alike; privacy counts once
                sources,
                id_field,
                settings.max_line_bytes,
                [t for t in self._transforms if t is not self._privacy],
            )
            self._transforms.append(CatalogMarks(self._catalog, self._source_index))

    async def _run_leg(self, fingerprints: list[tuple[Source, Fingerprint]]) -> dict[str, Any]:
        files = await self._start_leg(fingerprints)
        self.stats.bytes_total = sum(fp.size for _, fp in fingerprints)
        self.stats.bytes_done = sum(
            fp.size for (_, fp), f in zip(fingerprints, files, strict=True) if f.done
        )
        self.stats.started = time.monotonic()
        try:
            await self._pipeline(files)
        except BackfillError as exc:
            self._fail(exc)
        finally:
            self._dlq.close()
        cp = self._cp
        if self._privacy is not None and (warning := self._privacy.warning()):
            self._warn(warning)
        self._check_all_invalid(await cp.totals())
        try:
            await cp.end_leg(self.exit_code, self.error, self._leg_counts())
        except StateUnwritable as exc:  # the report is still owed; the next leg sees a crash
            if self._outranks(exc):
                self.exit_code, self.error = exc.exit_code, str(exc)
        return self._report(await cp.totals(), await cp.ambiguous_ranges(), await cp.warnings())

    async def _start_leg(self, fingerprints: list[tuple[Source, Fingerprint]]) -> list[FileState]:
        """Records the leg, matches the inputs with the checkpoint and plans the resume."""
        cp = self._cp
        current = self._settings_fingerprint()
        self._warn_changed(await cp.start_leg(current, self.command), current)
        appended = self.settings.follow or cp.followed  # a followed file grows
        files = await cp.register_files(
            fingerprints, self.settings.force, grown if appended else None
        )
        self._warn_vanished(await cp.vanished(files))
        sources = {f.id: f.source.name for f in files}
        stopped = await cp.take_ambiguous(self.settings.ambiguous, sources)
        ambiguous = [a for a in stopped if a.sent]
        reread = (
            stopped if self.settings.ambiguous == "resend" else [a for a in stopped if not a.sent]
        )
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
        settings = self.settings
        return {
            "kind": self._target.name,
            "batch_size": settings.effective_batch_size,
            "max_batch_bytes": settings.max_batch_bytes,
            "rules": [
                settings.allow_missing_timestamp,
                settings.allow_anonymous,
                str(settings.since),
                str(settings.until),
            ],
            "mapping": hashlib.sha256(
                msgspec.json.encode(settings.mapping or {}, order="sorted")
            ).hexdigest()[:16],
            "version": __version__,
            "endpoint": settings.endpoint,
            "rehearsal": "dry-run"
            if settings.dry_run
            else "server-dry-run"
            if settings.server_dry_run
            else "",
            "privacy": self._privacy.fingerprint() if self._privacy else "",
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
            what = "re-sending" if self.settings.ambiguous == "resend" else "assuming delivered"
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
        by_source = {f.source.name: f for f in files}

        def unsettled(source: str, line: int) -> bool:
            f = by_source.get(source)
            return f is not None and not f.settled(line - 1)

        return entries_in(self.settings.dead_letter_path, unsettled)

    # -- pipeline and shutdown -------------------------------------------------------------

    async def _pipeline(self, files: list[FileState]) -> None:
        loop = asyncio.get_running_loop()
        progress = Progress(
            self.stats, self.settings.progress, self.settings.progress_interval, self.out
        )
        handlers = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}
        for sig, code in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, code)
        sending = open_sender(
            self.settings,
            self.secret,
            self._target,
            self._policy,
            meter=self.stats,
            warn=self._warn,
            metrics=self.metrics,
        )
        endpoint: MetricsEndpoint | None = None
        try:
            async with sending as sender:
                self._sender = sender
                progress.limit = lambda: sender.limit.limit
                if self._follower is not None:
                    progress.lag = self._follower.lag.line
                endpoint = await self._start_metrics(sender)
                async with asyncio.TaskGroup() as tg:
                    self._reader = tg.create_task(self._read(files))
                    self._workers = [
                        tg.create_task(self._work(sender))
                        for _ in range(self.settings.max_in_flight)
                    ]
                    tg.create_task(self._tick(progress))
                    self._export(tg)
                    await asyncio.wait(self._workers)
                    self._done.set()
        finally:
            await self._stop_metrics(endpoint)
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            for sig in handlers:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            progress.done()

    async def _start_metrics(self, sender: Sender) -> MetricsEndpoint | None:
        """Follows the engine's counts and the sender's limit and caps; serves --metrics-port."""
        if self.metrics is None:
            return None
        caps, limit, s = sender.caps, sender.limit, self.stats
        self.metrics.follow(
            limit=lambda: limit.limit,
            in_flight=lambda: limit.in_flight,
            rate_wait=(lambda: caps.waited) if caps is not None else None,
            counts=lambda: {
                "records_read": s.records_read,
                "records_valid": s.records_read - s.records_invalid - s.records_filtered,
                "records_invalid": s.records_invalid,
                "records_accepted": s.records_accepted,
                "records_rejected": s.records_rejected,
                "retries": s.retries,
            },
        )
        if self._follower is not None:
            lag = self._follower.lag
            self.metrics.lag(
                age=lambda: nan if (age := lag.age()) is None else age,
                waiting=lambda: lag.waiting,
                unread=lambda: lag.unread,
            )
        if self.settings.metrics_textfile:
            self.metrics.write_textfile(self.settings.metrics_textfile)  # unwritable: stop now
            self._exporting = True
        if self.settings.metrics_port is None:
            return None
        endpoint = await self.metrics.serve(self.settings.metrics_port)
        print(f"metrics: {endpoint.url}", file=self.out)
        return endpoint

    def _export(self, tg: asyncio.TaskGroup) -> None:
        """--metrics-textfile: rewritten every METRICS_INTERVAL seconds while the run goes."""
        if self.metrics is not None and self._exporting and self.settings.metrics_textfile:
            path, every = self.settings.metrics_textfile, METRICS_INTERVAL
            tg.create_task(export_textfile(self.metrics, path, every, self._done, self._warn))

    async def _stop_metrics(self, endpoint: MetricsEndpoint | None) -> None:
        """The textfile's last write, with the final counts (the node-exporter convention)."""
        if self.metrics is not None and self.settings.metrics_textfile and self._exporting:
            try:
                self.metrics.write_textfile(self.settings.metrics_textfile)
            except UsageError as exc:
                self._warn(str(exc))
        if endpoint is not None:
            await endpoint.close()

    def _on_signal(self, code: int) -> None:
        if self._stopping:
            print("\nsecond signal: cancelling requests in flight", file=self.out)
            self._force_stop()
            return
        name = "SIGINT" if code == EXIT_SIGINT else "SIGTERM"
        print(
            f"\n{name}: stopping; waiting up to {self.settings.drain_timeout:.0f} s for "
            "requests in flight (press Ctrl-C again to cancel them)",
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
            self.settings.drain_timeout, self._force_stop
        )

    def _force_stop(self) -> None:
        for task in self._workers:
            task.cancel()

    def _fail(self, exc: BackfillError) -> None:
        """The first real failure is the run's outcome, even during a signal's drain: a
        refused key or a full disk matters more than the Ctrl-C (exit 3, not 130).
        A batch Abandoned because of the stop is no failure of its own."""
        message = self.secret.redact(str(exc))
        if not self._stopping:
            self._stop(exc.exit_code, message)
        elif self._outranks(exc):
            self.exit_code, self.error = exc.exit_code, message

    def _outranks(self, exc: BackfillError) -> bool:
        """Whether `exc` replaces the outcome so far (nothing yet, or only a signal)."""
        signalled = self.exit_code in (EXIT_SIGINT, EXIT_SIGTERM)
        return not isinstance(exc, Abandoned) and (self.exit_code == EXIT_OK or signalled)

    async def _tick(self, progress: Progress) -> None:
        while not await wait_event(self._done, progress.interval):
            progress.show()

    # -- reader --------------------------------------------------------------------------

    async def _read(self, files: list[FileState]) -> None:
        try:
            if self._follower is not None:
                await self._follower.run(files)  # until a stop cancels it
            async with contextlib.aclosing(self._to_read(files)) as todo:
                async for f in todo:
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

    async def _to_read(self, files: list[FileState]) -> AsyncGenerator[FileState, None]:
        """The files this process reads, in order (a worker of --processes asks its parent)."""
        for f in files:
            if not f.done:
                yield f

    def _builder(self, f: FileState) -> BatchBuilder:
        settings = self.settings
        return BatchBuilder(
            f.id,
            f.source.name,
            self._check,
            max_records=settings.effective_batch_size,
            max_bytes=settings.max_batch_bytes,
            envelope=self._target.envelope,
            plan=f.plan,
        )

    async def _read_file(self, f: FileState) -> None:
        settings, name = self.settings, f.source.name
        builder = self._builder(f)
        lines = f.start_line
        start = Start(f.start_line, f.start_offset)
        blocks = open_blocks(
            f.source, start, self._transforms, max_line_bytes=settings.max_line_bytes
        )
        try:
            async with contextlib.aclosing(blocks):
                async for block in blocks:
                    self.stats.bytes_done += block.raw_bytes
                    lines = block.first + len(block.lines)
                    for batch in builder.feed(block):
                        await self._submit(batch)
                    await asyncio.sleep(0)  # a block is ~1 MiB of validation: let requests run
        except OSError as exc:
            raise InputUnreadable(f"cannot read {name}: {exc.strerror or exc}") from None
        for batch in builder.finish():
            await self._submit(batch)
        await self._finish_file(f, lines, "; ".join(builder.warnings) or None)

    async def _finish_file(self, f: FileState, lines: int, warning: str | None) -> None:
        if lines == 0 and warning is None:
            warning = "empty file: no records"
        if warning:
            self._warn(f"{f.source.name}: {warning}")
        await self._cp.mark_file_read(f.id, lines, warning)

    def _leg_counts(self) -> tuple[int, int]:
        return (self.stats.requests, self.stats.retries)

    def _source_index(self, source: Source) -> int:
        return self._index[source.key]

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
            await self._cp.mark_acked(batch, leg=self._leg_counts(), first=sync)
        self._check_invalid_ratio()

    def _check_invalid_ratio(self) -> None:
        stats, settings = self.stats, self.settings
        if self._ratio_checked or stats.records_read < settings.invalid_ratio_window:
            return
        self._ratio_checked = True
        ratio = stats.records_invalid / stats.records_read
        if ratio > settings.max_invalid_ratio:
            raise TooManyInvalid(
                f"{stats.records_invalid:,} of the first {stats.records_read:,} records are "
                f"invalid ({ratio:.0%} > --max-invalid-ratio {settings.max_invalid_ratio}): "
                f"the input does not look like Miso {settings.kind} records{self._hint()}. "
                f"See {settings.dead_letter_path}; rerun with --max-invalid-ratio 1 to load "
                "the valid ones anyway"
            )

    def _check_all_invalid(self, totals: Totals) -> None:
        """An input too small for the ratio window, and entirely invalid: nothing was
        loaded, which must not look like success."""
        if self.exit_code != EXIT_OK or self.settings.max_invalid_ratio >= 1.0:
            return
        if not 0 < totals.records_invalid == totals.records_read:
            return
        n = totals.records_read
        what = "the only record read is" if n == 1 else f"all {n:,} records read are"
        self.exit_code = TooManyInvalid.exit_code
        self.error = (
            f"{what} invalid, so nothing was loaded{self._hint()}. See "
            f"{self.settings.dead_letter_path} for each line's reason"
        )

    def _hint(self) -> str:
        text = hint(self.settings.kind, self._samples, mapped=self._mapped)
        return f" ({text})" if text and self.settings.operation == "upload" else ""

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
        await self._cp.mark_inflight(batch)
        self.stats.in_flight += 1
        delivery = Delivery()
        try:
            await sender.deliver(batch, delivery)
        except (NeedsUser, Abandoned, asyncio.CancelledError):
            if not delivery.maybe_stored:  # refused, or never connected: nothing was stored
                await asyncio.shield(self._cp.mark_unsent(batch))
            raise
        finally:
            self.stats.in_flight -= 1
        rejected = delivery.rejected
        self._dlq.write(batch.source, rejected)
        sync = self._dlq.sync if rejected or batch.invalid else None  # on the checkpoint thread
        outcome = Outcome(
            delivery.accepted,
            len(rejected),
            delivery.requests,
            delivery.retries,
            maybe_twice=delivery.accepted * delivery.ambiguous,
        )
        await self._cp.mark_acked(batch, outcome, leg=self._leg_counts(), first=sync)
        if self._follower is not None:
            self._follower.acked(batch)
        self.stats.records_accepted += delivery.accepted
        self.stats.records_rejected += len(rejected)
        if delivery.stop is not None:  # recorded first: what the server took stays acknowledged
            raise delivery.stop

    # -- report --------------------------------------------------------------------------

    def _report(
        self, totals: Totals, ambiguous: list[dict[str, Any]], warnings: list[str]
    ) -> dict[str, Any]:
        report: dict[str, Any] = {
            "status": run_status(self.exit_code),
            "exit_code": self.exit_code,
            "kind": self.settings.kind,
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
            "dry_run": self.settings.dry_run,
            "server_dry_run": self.settings.server_dry_run,
            "rehearsal": self.settings.dry_run or self.settings.server_dry_run,
            "state_dir": self.settings.state_dir,
            "dead_letter": str(self.settings.dead_letter_path),
            "warnings": warnings,  # of every leg
            "error": self.error,
        }
        note = rehearsal_note(self.settings.dry_run, self.settings.server_dry_run)
        if note:
            report["note"] = note
        if self._privacy is not None:  # this leg's lines (a resumed leg counts what it read)
            report["privacy"] = self._privacy.counts.report(totals.legs)
        if self.exit_code != EXIT_OK and self.command:
            report["resume_command"] = self.command
        return report

    def _client_url(self) -> str:
        return self.settings.endpoint.rstrip("/") + self._target.path


def _fingerprint(source: Source) -> Fingerprint:
    try:
        return source.fingerprint()
    except OSError as exc:
        raise UsageError(f"cannot read input {source.name}: {exc.strerror or exc}") from None
