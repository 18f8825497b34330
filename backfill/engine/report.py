"""The report of a leg: the whole load's totals from the checkpoint, and this leg's own."""

from __future__ import annotations

import time
from typing import Any

from backfill.checkpoint import Totals
from backfill.engine.intake import Intake
from backfill.errors import EXIT_OK, run_status
from backfill.progress import rehearsal_note


class Report(Intake):
    """Assembles the report `run` returns (printed as JSON by the CLI)."""

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
