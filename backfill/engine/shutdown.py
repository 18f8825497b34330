"""Stopping a leg: signals, the first failure that decides the outcome, the drain timeout."""

from __future__ import annotations

import asyncio

from backfill.engine.intake import Intake
from backfill.errors import EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, Abandoned, BackfillError


class Shutdown(Intake):
    """A stop ends reading at once; workers finish what they hold, bounded by the drain."""

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
