"""The rate caps on virtual time: exact take times, batches larger than the bucket, FIFO, debt.

The measured rate against the real clock is a benchmark (`python -m benchmarks.adaptive`),
not a unit test: no timing assertions here.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from backfill.errors import UsageError
from backfill.ratelimit import RateCaps, TokenBucket, share
from tests.fake_time import FakeTime, JumpingTime, settle


def bucket(time: FakeTime, rate: float, burst: float | None = None) -> TokenBucket:
    return TokenBucket(rate, burst, clock=time.clock, sleep=time.sleep)


async def takes(limiter: TokenBucket | RateCaps, time: FakeTime, amounts: list[int]) -> list[float]:
    """The clock when each acquisition returned, one acquirer after the other."""
    times = []
    for amount in amounts:
        await limiter.acquire(amount)
        times.append(round(time.now, 9))
    return times


async def test_a_full_bucket_goes_at_once_then_the_rate_holds() -> None:
    time = JumpingTime()
    limiter = bucket(time, rate=100, burst=10)
    assert await takes(limiter, time, [5] * 6) == [0.0, 0.0, 0.05, 0.1, 0.15, 0.2]
    assert limiter.waited == pytest.approx(0.2)


async def test_a_batch_larger_than_the_bucket_waits_longer_and_goes() -> None:
    time = JumpingTime()
    limiter = bucket(time, rate=100, burst=10)
    await limiter.acquire(50)  # 10 in the bucket: waits for 40 more, never raises
    assert (round(time.now, 9), limiter.tokens) == (0.4, 0.0)
    await limiter.acquire(1)
    assert round(time.now, 9) == 0.41
    await limiter.acquire(50)
    assert round(time.now, 9) == 0.91
    assert limiter.waited == pytest.approx(0.91)


async def test_waiters_go_in_order_and_the_wait_counts_once() -> None:
    time = JumpingTime()
    limiter = bucket(time, rate=10, burst=10)
    order: list[tuple[int, float]] = []

    async def take(n: int) -> None:
        await limiter.acquire(10)
        order.append((n, round(time.now, 9)))

    await asyncio.gather(*(take(n) for n in range(5)))
    assert order == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert limiter.waited == pytest.approx(4.0)  # head-of-line time, not 1+2+3+4


async def test_a_cancelled_waiter_takes_nothing() -> None:
    time = FakeTime()
    limiter = bucket(time, rate=10, burst=10)
    await limiter.acquire(10)
    leaver = asyncio.ensure_future(limiter.acquire(5))
    await settle()
    leaver.cancel()
    await asyncio.gather(leaver, return_exceptions=True)
    follower = asyncio.ensure_future(limiter.acquire(5))
    await time.advance(0.4)
    assert not follower.done()
    await time.advance(0.1)
    assert follower.done()
    assert limiter.tokens == 0.0


async def test_the_cap_holds_at_every_instant_for_any_batch_sizes() -> None:
    time = JumpingTime()
    limiter = bucket(time, rate=1000)  # default burst: 100
    sizes = [random.Random(i).randint(1, 400) for i in range(300)]
    taken = 0
    for size in sizes:
        await limiter.acquire(size)
        taken += size
        assert taken <= limiter.burst + 1000 * time.now + 1e-6
    assert taken / time.now == pytest.approx(1000, rel=0.01)


async def test_caps_on_requests_and_records_together() -> None:
    time = JumpingTime()
    caps = RateCaps(
        records_per_second=1000, requests_per_second=2, clock=time.clock, sleep=time.sleep
    )
    assert await takes(caps, time, [100] * 4) == [0.0, 0.5, 1.0, 1.5]
    caps = RateCaps(records_per_second=1000, clock=time.clock, sleep=time.sleep)
    start = time.now
    await takes(caps, time, [500] * 3)
    assert round(time.now - start, 9) == 1.4  # 100 in the bucket, then 1400 at 1000/s
    assert RateCaps().waited == 0.0


async def test_a_request_without_records_never_waits_behind_a_batchs_records() -> None:
    """A task-status poll takes a request, and no place in the records bucket's line."""
    time = FakeTime()
    caps = RateCaps(records_per_second=100, clock=time.clock, sleep=time.sleep)
    await caps.acquire(10)  # the bucket (10) is empty now
    batch = asyncio.ensure_future(caps.acquire(100))  # at the head for a second
    await settle()
    poll = asyncio.ensure_future(caps.acquire(0))
    await settle()
    assert poll.done() and not batch.done()
    await time.advance(1.0)
    assert batch.done()


def test_bad_caps_name_their_flag() -> None:
    with pytest.raises(UsageError, match="--max-records-per-second must be a positive"):
        RateCaps(records_per_second=0)
    with pytest.raises(UsageError, match="--max-requests-per-second must be a positive"):
        RateCaps(requests_per_second=float("nan"))


def test_each_process_gets_its_share() -> None:
    assert share(50_000, 4) == 12_500
    assert share(None, 4) is None
    assert share(10, 0) == 10
