"""The pipeline of one leg: the reader task, the bounded queue, the workers, the progress
ticks and the metrics, all owned by one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator
from math import nan

from backfill.batching import Batch
from backfill.checkpoint import FileState, Outcome
from backfill.delivery import Delivery, Sender, open_sender
from backfill.engine.shutdown import Shutdown
from backfill.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    Abandoned,
    BackfillError,
    InputUnreadable,
    NeedsUser,
    TooManyInvalid,
    UsageError,
)
from backfill.metrics import METRICS_INTERVAL, MetricsEndpoint, export_textfile
from backfill.progress import Progress
from backfill.sources import Start, open_blocks
from backfill.waiting import wait_event


class Pipeline(Shutdown):
    """reader -> bounded queue -> workers, until the input ends or a stop."""

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
