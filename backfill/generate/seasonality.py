"""When records happen: weekly and daily seasonality, and strictly increasing timestamps.

Counts are allocated exactly (the run writes precisely `--records` lines), by systematic
rounding of noisy weights: every day and minute gets its expected share, give or take one.
Within a day timestamps are distinct milliseconds in increasing order, which is what makes
every valid line of a run unique (the resume tests count exact duplicates on the server).
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Final

MINUTES_PER_DAY: Final = 1440
MS_PER_MINUTE: Final = 60_000

# Monday first: shoppers browse more at the end of the week and on Sunday evening.
WEEKDAY_FACTOR: Final = (0.92, 0.94, 0.97, 1.0, 1.06, 1.13, 1.08)
PEAK_HOUR_UTC: Final = 19.5  # evening in Europe, afternoon in the Americas
TROUGH_SHARE: Final = 0.12  # the quietest minute, relative to the busiest

# "SS.mmmZ" for every millisecond of a minute: formatting once beats formatting per record.
_SECONDS: Final = tuple(f"{s:02d}." for s in range(60))
_MILLIS: Final = tuple(f"{ms:03d}Z" for ms in range(1000))
SECOND_MS: Final = tuple(second + ms for second in _SECONDS for ms in _MILLIS)
# 16 random bits to a millisecond of the minute (4,464 of the 60,000 get two chances in 65,536).
TICK_MS: Final = tuple((tick * MS_PER_MINUTE) >> 16 for tick in range(1 << 16))


def allocate(total: int, weights: Sequence[float], rng: random.Random) -> list[int]:
    """Split `total` in proportion to `weights`, each share rounded up or down, summing exactly."""
    weight_sum = sum(weights)
    if total == 0 or weight_sum <= 0:
        return [0] * len(weights)
    scale = total / weight_sum
    counts: list[int] = []
    cumulative, offset, previous = 0.0, rng.random(), 0
    for w in weights:
        cumulative += w * scale
        upto = min(int(cumulative + offset), total)
        counts.append(upto - previous)
        previous = upto
    counts[-1] += total - previous
    return counts


def day_weights(start: date, days: int, rng: random.Random) -> list[float]:
    """Weekly rhythm, slow growth over the period, and a few promotion days."""
    weights = []
    for i in range(days):
        day = start + timedelta(days=i)
        w = WEEKDAY_FACTOR[day.weekday()] * (1.0 + 0.003 * i) * rng.lognormvariate(0.0, 0.06)
        if rng.random() < 0.04:
            w *= 1.6  # a sale or a newsletter send
        weights.append(w)
    return weights


def _diurnal() -> list[float]:
    curve = []
    for minute in range(MINUTES_PER_DAY):
        phase = 2.0 * math.pi * (minute / 60.0 - PEAK_HOUR_UTC) / 24.0
        curve.append(TROUGH_SHARE + (1.0 - TROUGH_SHARE) * ((1.0 + math.cos(phase)) / 2.0) ** 1.5)
    return curve


DIURNAL: Final = tuple(_diurnal())


def minute_counts(records: int, rng: random.Random) -> list[int]:
    """Records per minute of one day: the daily curve with minute-to-minute noise."""
    weights = [w * rng.lognormvariate(0.0, 0.15) for w in DIURNAL]
    counts = allocate(records, weights, rng)
    if max(counts, default=0) > MS_PER_MINUTE:
        raise ValueError(f"{records} records in one day do not fit in distinct milliseconds")
    return counts


def minute_offsets(count: int, rng: random.Random) -> list[int]:
    """`count` distinct milliseconds of a minute, increasing. Uniform like `random.sample` at a
    fraction of its cost: one draw of random bits, C-level set and sort, a rare top-up."""
    raw = array("H", rng.getrandbits(16 * count).to_bytes(2 * count, "little"))
    picked = set(map(TICK_MS.__getitem__, raw))
    while len(picked) < count:
        picked.add(TICK_MS[rng.getrandbits(16)])
    return sorted(picked)


def minute_heads(day: date) -> list[str]:
    prefix = day.isoformat()
    return [f"{prefix}T{m // 60:02d}:{m % 60:02d}:" for m in range(MINUTES_PER_DAY)]
