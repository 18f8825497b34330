"""Rate caps for a run: `--max-records-per-second` and `--max-requests-per-second`.

A token bucket of our own rather than `aiolimiter.AsyncLimiter`: the latter raises when one
acquisition asks for more than the bucket holds, so a cap of 5,000 records/s could not pass a
10,000-record batch unless the bucket were sized for the largest batch, and a bucket that big
is a burst that big (a whole batch early, twice the cap over the first second). Here the
acquirer at the head lets the bucket fill past its size up to what it asks, so a batch larger
than the bucket still goes, it just waits longer, and never early:

    amount taken by time t  <=  burst + rate * t

at every instant, whatever the batch sizes; the bucket is small (0.1 s of the rate), so over a
run of a few seconds or more the cap holds within a few percent, and exactly in the long run.
(Letting the large batch go on a full bucket and leaving a debt was tried first: it overshoots
by a whole batch, +5% over 3 s at 50,000/s with 10,000-record batches.)

Acquirers are served first come, first served (one waits at the head while the rest queue
behind it), and `waited` is the time the head spent sleeping: the seconds the cap held the run
back, never more than the run's wall time however many workers queue (the metric "the rate
cap's wait").

With `--processes`, each process gets its share (`share`) so the cap is a total for the command.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from backfill.errors import UsageError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

BURST_SECONDS: Final = 0.1  # the bucket holds this much of the rate: a small start-up burst


class TokenBucket:
    """`rate` units per second; `burst` units may go at once (default: 0.1 s worth, >= 1)."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"a rate must be a positive number, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate * BURST_SECONDS)
        if not self.burst > 0:
            raise ValueError(f"a burst must be positive, got {self.burst}")
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()
        self._turn = asyncio.Lock()
        self.waited = 0.0

    @property
    def tokens(self) -> float:
        """What is in the bucket now (never more than `burst`)."""
        self._refill()
        return self._tokens

    async def acquire(self, amount: float) -> None:
        """Waits its turn, then until the bucket holds `amount`; takes it.

        Cancelled while waiting, it takes nothing and the next acquirer moves up (the tokens
        that gathered past the bucket's size for it spill over).
        """
        async with self._turn:
            self._refill()
            if self._tokens < amount:
                pause = (amount - self._tokens) / self.rate
                await self._sleep(pause)
                self.waited += pause
                self._refill(up_to=max(self.burst, amount))
            self._tokens = max(0.0, self._tokens - amount)  # clock rounding, not a debt

    def _refill(self, up_to: float | None = None) -> None:
        now = self._clock()
        full = self.burst if up_to is None else up_to
        self._tokens = min(full, self._tokens + (now - self._updated) * self.rate)
        self._updated = now


class RateCaps:
    """The run's caps together; either may be absent. `acquire(records)` before each request."""

    def __init__(
        self,
        records_per_second: float | None = None,
        requests_per_second: float | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.records = _bucket("--max-records-per-second", records_per_second, clock, sleep)
        self.requests = _bucket("--max-requests-per-second", requests_per_second, clock, sleep)

    @property
    def waited(self) -> float:
        """Seconds the caps held requests back (each bucket's head-of-line sleeping, summed)."""
        return sum(b.waited for b in (self.records, self.requests) if b is not None)

    async def acquire(self, records: int) -> None:
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.records is not None and records:  # a poll waits behind no batch's records
            await self.records.acquire(records)


def share(total: float | None, processes: int) -> float | None:
    """One process's part of a cap meant for the whole command."""
    return None if total is None else total / max(1, processes)


def _bucket(flag: str, rate: float | None, clock: Clock, sleep: Sleep) -> TokenBucket | None:
    if rate is None:
        return None
    if not (math.isfinite(rate) and rate > 0):
        raise UsageError(f"{flag} must be a positive number, got {rate}")
    return TokenBucket(rate, clock=clock, sleep=sleep)
