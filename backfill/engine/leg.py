"""One leg of a load: match the inputs with the checkpoint, plan the resume, run the
pipeline, then record the leg's end and report on the whole load."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import msgspec

from backfill import __version__
from backfill.catalog import CatalogMarks, prescan
from backfill.checkpoint import AmbiguousRange, FileState
from backfill.deadletter import entries_in
from backfill.engine.pipeline import Pipeline
from backfill.engine.report import Report
from backfill.errors import BackfillError, StateUnwritable, UsageError
from backfill.follow import check_resume_points, follow_sources, grown
from backfill.progress import plural
from backfill.schema import KINDS
from backfill.shards import owned_by
from backfill.sources import Fingerprint, Source, find_sources

log = logging.getLogger("backfill")


class Engine(Pipeline, Report):
    """The engine: `run` loads one leg; its parts are layers of this class."""

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
        if appended and not self.settings.force:
            await asyncio.to_thread(check_resume_points, files)
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


def _fingerprint(source: Source) -> Fingerprint:
    try:
        return source.fingerprint()
    except OSError as exc:
        raise UsageError(f"cannot read input {source.name}: {exc.strerror or exc}") from None
