"""The server's capacity model: at most N requests served at once, the rest rejected or queued.

A real API under load either sheds (429 with Retry-After) or slows down (requests wait in a
queue, latency grows). Both are what an adaptive client must cope with, so the embedded server
can play either, and reports what a benchmark needs to judge the client: how many requests it
served, how many it turned away, and the time-weighted mean number of requests it held (served
plus queued) — Little's law's L, the load the client put on the service.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from backfill.server.config import Capacity


class CapacityGate:
    """Admits /v1 requests under the live Capacity; `update` applies a new one at once."""

    def __init__(self, capacity: Capacity, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self._clock = clock
        self._serving = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._since = self._last = self._clock()
        self._area = 0.0  # integral of requests at the server over time (request-seconds)
        self._busy = 0.0  # seconds with at least one request at the server
        self.served = 0
        self.rejected = 0
        self.peak = self._serving + len(self._queue)

    def reset_stats(self) -> None:
        """Starts the counters afresh; requests being served or queued stay where they are."""
        self._account()
        self._reset_stats()

    def update(self, capacity: Capacity) -> None:
        """A raised capacity admits queued requests now; a lowered one lets the served finish."""
        self.capacity = capacity
        self._admit_queued()

    async def enter(self) -> bool:
        """True once the request may be served; False if it must be answered 429 (reject mode)."""
        self._account()
        if self._has_room() and not self._queue:
            self._serving += 1
            self.served += 1
            self._note_peak()
            return True
        if self.capacity.over_capacity == "reject":
            self.rejected += 1
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        self._note_peak()
        try:
            await waiter
        except asyncio.CancelledError:
            self._leave_queue(waiter)
            raise
        return True

    def leave(self) -> None:
        self._account()
        self._serving -= 1
        self._admit_queued()

    def _leave_queue(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():  # admitted just before the cancellation
            self.leave()
            return
        self._account()
        self._queue.remove(waiter)

    def _has_room(self) -> bool:
        return self.capacity.limit == 0 or self._serving < self.capacity.limit

    def _admit_queued(self) -> None:
        while self._queue and self._has_room():
            waiter = self._queue.popleft()
            self._account()
            self._serving += 1
            self.served += 1
            waiter.set_result(None)

    def _note_peak(self) -> None:
        self.peak = max(self.peak, self._serving + len(self._queue))

    def _account(self) -> None:
        now = self._clock()
        at_server = self._serving + len(self._queue)
        self._area += at_server * (now - self._last)
        if at_server:
            self._busy += now - self._last
        self._last = now

    def stats(self) -> dict[str, Any]:
        """`mean_at_server_busy` ignores idle time, so a benchmark need not reset right before."""
        self._account()
        elapsed = self._last - self._since
        return {
            "limit": self.capacity.limit,
            "over_capacity": self.capacity.over_capacity,
            "retry_after": self.capacity.retry_after,
            "serving": self._serving,
            "queued": len(self._queue),
            "served": self.served,
            "rejected": self.rejected,
            "peak_at_server": self.peak,
            "mean_at_server": self._area / elapsed if elapsed > 0 else 0.0,
            "mean_at_server_busy": self._area / self._busy if self._busy > 0 else 0.0,
            "busy_seconds": self._busy,
        }
