"""What one leg of the engine holds, and how a batch the reader made enters the pipeline:
counted, checked against the invalid ratio, then queued for the workers (or, holding
nothing to send, settled at once)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from backfill.batching import Batch, BatchBuilder
from backfill.catalog import CatalogPlan
from backfill.checkpoint import Checkpoint, FileState, Totals
from backfill.config import Secret, Settings
from backfill.deadletter import DeadLetterFile
from backfill.delivery import Sender
from backfill.errors import EXIT_OK, TooManyInvalid
from backfill.follow import Follower
from backfill.hints import SAMPLES, hint
from backfill.ids import IdLines, id_check
from backfill.mapping import build_transform
from backfill.metrics import Metrics
from backfill.privacy import build_privacy
from backfill.progress import LegStats
from backfill.retry import RetryPolicy
from backfill.schema import RecordValidator
from backfill.sources import BlockTransform, Source
from backfill.targets import target_for


class Intake:
    """The leg's state; the pipeline, the shutdown and the report build on it."""

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
