"""The retry policy: capped exponential backoff with full jitter, honouring Retry-After.

Whether to retry is decided by the classification of an answer (backfill.client); this
module only decides *how long to wait* and *when to give up*.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    max_elapsed: float = 600.0
    initial: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1).

        Full jitter (AWS architecture blog) spreads a thundering herd of workers; a server's
        Retry-After is a floor, never shortened by the jitter.
        """
        backoff = random.uniform(0.0, min(self.cap, self.initial * 2 ** (attempt - 1)))
        if retry_after is not None:
            return max(retry_after, backoff)
        return backoff

    def gives_up(self, attempt: int, started: float, next_delay: float) -> bool:
        """True when another attempt would exceed the attempt or time budget."""
        if attempt >= self.max_attempts:
            return True
        return time.monotonic() + next_delay - started > self.max_elapsed
