"""Which lines of a stream get something done to them, at a rate, without a coin per line."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator


class GapStream:
    """Geometric gaps between chosen lines: the same distribution as a coin flipped per line
    at `rate`, for one random draw per chosen line instead of one per line."""

    def __init__(self, rate: float, rng: random.Random) -> None:
        self._rate = rate
        self._rng = rng
        self.countdown = self.gap()

    def positions(self, start: int, stop: int) -> Iterator[int]:
        """Indexes in [start, stop) of the chosen lines, as the stream of lines goes by."""
        if self.countdown < 0:
            return
        index = start + self.countdown - 1
        while index < stop:
            yield index
            index += self.gap()
        self.countdown = index - stop + 1

    def gap(self) -> int:
        """Lines until the next chosen one (1 = the next line); -1 when the rate is 0."""
        if self._rate <= 0.0:
            return -1
        if self._rate >= 1.0:
            return 1
        return 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - self._rate))
