"""The concurrency limits on an injected clock: no sleeping, no timing assertions.

Round trips are whole seconds so that window arithmetic is exact in floating point. The last
tests drive the controller against simulated servers (a discrete-event simulation in virtual
time), to check the behaviour the benchmarks measure for real: convergence near capacity,
few 429s, and following a capacity raised at runtime.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Literal

import pytest

from backfill.concurrency import AdaptiveLimit, ConcurrencyLimit, FixedLimit
from backfill.errors import UsageError
from tests.fake_time import FakeTime, settle


def adaptive(time: FakeTime, initial: int, maximum: int = 50, **kwargs: Any) -> AdaptiveLimit:
    return AdaptiveLimit(initial, maximum, clock=time.clock, sleep=time.sleep, **kwargs)


def busy_round(limit: ConcurrencyLimit, time: FakeTime, rtt: float = 1.0) -> int:
    """Everyone wants a slot (unbounded demand); all finish `rtt` later. Returns the starts."""
    started = 0
    while limit.try_acquire():
        started += 1
    time.now += rtt
    for _ in range(started):
        limit.record(rtt)
        limit.release()
    return started


def window(
    limit: ConcurrencyLimit, time: FakeTime, rtt: float | None, bp: bool, gap: float = 1.0
) -> None:
    """One request of a window with the given outcome, ending `gap` later (past the window)."""
    assert limit.try_acquire()
    time.now += gap
    limit.record(rtt, backpressure=bp)
    limit.release()


def test_ramps_up_one_per_window_while_the_limit_is_reached() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=1, maximum=6)
    started = [busy_round(limit, time) for _ in range(9)]
    assert started == [1, 1, 2, 3, 4, 5, 6, 6, 6]
    assert (limit.limit, limit.in_flight, limit.rtt_mean) == (6, 0, 1.0)


def test_does_not_grow_without_demand() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=4)
    for _ in range(10):
        window(limit, time, 1.0, bp=False)  # one request at a time: the limit is never reached
    assert limit.limit == 4


def test_back_pressure_decreases_and_never_below_one() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=10)
    window(limit, time, 1.0, bp=False)  # the first success sets the RTT average
    limits = []
    for _ in range(25):
        window(limit, time, None, bp=True)
        limits.append(limit.limit)
    assert limits[:6] == [9, 8, 7, 6, 5, 4]
    assert limits[-1] == 1
    assert limit.rtt_mean == 1.0  # only successes feed the average


def test_back_pressure_before_any_success_still_decreases() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=8)
    window(limit, time, None, bp=True)
    assert (limit.limit, limit.rtt_mean) == (7, None)


def test_a_round_trip_beyond_the_deviation_decreases_and_the_mean_does_not() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=10)
    for _ in range(3):
        window(limit, time, 1.0, bp=False)
    assert limit.limit == 10  # exactly the mean is not a slowdown
    time.now += 1.0
    window(limit, time, 2.5, bp=False)
    assert limit.limit == 9


def test_jitter_within_the_tolerance_is_not_a_slowdown() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=10, rtt_tolerance=0.05)
    for _ in range(3):
        window(limit, time, 1.0, bp=False)
    window(limit, time, 1.04, bp=False, gap=2.0)
    assert limit.limit == 10
    window(limit, time, 1.1, bp=False, gap=2.0)
    assert limit.limit == 9


def test_milliseconds_of_slowdown_against_a_fast_api_are_not_a_slowdown() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=10, rtt_floor=0.005)
    for _ in range(3):
        window(limit, time, 0.002, bp=False)
    window(limit, time, 0.006, bp=False)  # 3x slower, but by 4 ms
    assert limit.limit == 10
    window(limit, time, 0.02, bp=False)
    assert limit.limit == 9


def test_a_slow_window_right_after_a_cut_does_not_cut_again() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=10)
    for _ in range(3):
        window(limit, time, 1.0, bp=False)
    window(limit, time, 2.0, bp=False, gap=3.0)
    assert limit.limit == 9
    window(limit, time, 4.0, bp=False, gap=5.0)  # requests begun under the old limit: slower
    assert limit.limit == 9
    window(limit, time, None, bp=True, gap=5.0)  # back-pressure always counts
    assert limit.limit == 8


def test_a_window_with_back_pressure_does_not_grow() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=2)
    busy_round(limit, time)
    assert limit.try_acquire() and limit.try_acquire()  # limit reached
    time.now += 1.0
    limit.record(None, backpressure=True)
    limit.record(1.0)
    limit.release()
    limit.release()
    assert limit.limit == 1


def test_probes_the_level_that_hurt_only_after_a_hold() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=7, probe_hold_windows=5.0)
    busy_round(limit, time)
    window(limit, time, None, bp=True)
    assert (limit.limit, limit.ceiling) == (6, 7)
    limits = [limit.limit for _ in range(6) if busy_round(limit, time)]
    # windows end at t=3..8; the decrease was at t=2, so 7 is tried from t=7
    assert limits == [6, 6, 6, 6, 7, 7]
    assert limit.ceiling == 7  # the window that opened at 7 held requests begun at 6
    busy_round(limit, time)
    assert (limit.limit, limit.ceiling) == (8, None)  # a clean window at 7: growth goes on


def test_a_failed_probe_doubles_the_hold() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=3, probe_hold_windows=2.0)
    busy_round(limit, time)
    window(limit, time, None, bp=True)  # 3 hurt: hold 2 s
    while limit.limit < 3:
        busy_round(limit, time)
    assert time.now == 4.0  # decreased at t=2, probed after the 2 s hold
    window(limit, time, None, bp=True)  # the probe at 3 hurts again: hold 4 s
    while limit.limit < 3:
        busy_round(limit, time)
    assert time.now == 9.0  # decreased at t=5, probed after the 4 s hold


def test_a_retry_after_pause_postpones_the_next_probe() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=4, pause_cost=10.0)
    busy_round(limit, time)
    assert limit.try_acquire()
    time.now += 1.0
    limit.pause_until(time.now + 2.0)
    limit.record(None, backpressure=True)
    limit.release()
    assert limit.limit == 3
    time.now += 2.0
    while limit.limit < 4:
        busy_round(limit, time)
    assert time.now == 22.0  # the 2 s pause began at t=2: no probe for 10 x 2 s


async def test_a_pause_blocks_every_acquirer_until_its_deadline() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=4)
    async with limit.slot():
        limit.pause_until(5.0)
        waiting = [asyncio.ensure_future(limit.acquire()) for _ in range(3)]
        retrying = asyncio.ensure_future(limit.wait_if_paused())
        await settle()
        assert not any(task.done() for task in [*waiting, retrying])
        await time.advance(4.0)
        assert not any(task.done() for task in [*waiting, retrying])
        await time.advance(1.0)
        assert all(task.done() for task in [*waiting, retrying])
        assert limit.in_flight == 4
    assert limit.in_flight == 3


async def test_a_lowered_limit_lets_holders_finish() -> None:
    time = FakeTime()
    limit = adaptive(time, initial=4)
    busy_round(limit, time)
    for _ in range(4):
        await limit.acquire()
    time.now += 1.0
    limit.record(None, backpressure=True)
    assert (limit.limit, limit.in_flight) == (3, 4)
    newcomer = asyncio.ensure_future(limit.acquire())
    await settle()
    limit.release()
    await settle()
    assert not newcomer.done()  # 3 in flight under a limit of 3
    limit.release()
    await settle()
    assert newcomer.done()
    assert limit.in_flight == 3


async def test_acquirers_are_served_in_order_and_may_leave_the_queue() -> None:
    limit = FixedLimit(1)
    order: list[int] = []

    async def take(n: int) -> None:
        async with limit.slot():
            order.append(n)

    await limit.acquire()
    tasks = [asyncio.ensure_future(take(n)) for n in range(4)]
    await settle()
    tasks[1].cancel()
    await settle()
    limit.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3]
    assert limit.in_flight == 0


def test_fixed_limit_ignores_round_trips() -> None:
    time = FakeTime()
    limit = FixedLimit(8, clock=time.clock, sleep=time.sleep)
    for _ in range(5):
        assert busy_round(limit, time) == 8
        limit.record(None, backpressure=True)
    assert limit.limit == 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FixedLimit(0), "at least 1"),
        (lambda: AdaptiveLimit(0, 10), "between 1 and the maximum"),
        (lambda: AdaptiveLimit(20, 10), "between 1 and the maximum"),
        (lambda: AdaptiveLimit(1, 10, decrease_ratio=1.0), "decrease ratio"),
        (lambda: AdaptiveLimit(1, 10, ewma_alpha=0.0), "ewma alpha"),
    ],
)
def test_bad_settings_are_refused(make: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make()


# --- simulated servers ------------------------------------------------------------------------


class Simulation:
    """A server serving `capacity` requests at once for `service` s each, in virtual time.

    Demand is unbounded: the client starts a request whenever the limit lets it. Over capacity
    the server answers 429 at once with Retry-After (reject) or queues FIFO (queue).
    """

    def __init__(self, mode: Literal["reject", "queue"], capacity: int) -> None:
        self.mode, self.capacity, self.service, self.retry_after = mode, capacity, 0.2, 1.0
        self.now = 0.0
        self.limit = AdaptiveLimit(1, 100, clock=lambda: self.now)
        self.events: list[tuple[float, int, str, float]] = []
        self.seq = itertools.count()
        self.serving = 0
        self.queue: list[float] = []
        self.served = self.rejected = 0
        self.area = 0.0  # request-seconds at the server

    def run(self, until: float) -> None:
        self._fill()
        while self.events and self.events[0][0] <= until:
            at, _, kind, sent = heapq.heappop(self.events)
            self.area += (self.serving + len(self.queue)) * (at - self.now)
            self.now = at
            if kind == "done":
                self._done(sent)
            self._fill()

    def _fill(self) -> None:
        while self.limit.try_acquire():
            if self.serving < self.capacity:
                self._serve(self.now)
            elif self.mode == "queue":
                self.queue.append(self.now)
            else:
                self.rejected += 1
                self.limit.pause_until(self.now + self.retry_after)
                self.limit.record(None, backpressure=True)
                self.limit.release()
                self._at(self.now + self.retry_after, "wake", 0.0)

    def _serve(self, sent: float) -> None:
        self.serving += 1
        self._at(self.now + self.service, "done", sent)

    def _done(self, sent: float) -> None:
        self.serving -= 1
        self.served += 1
        self.limit.record(self.now - sent)
        self.limit.release()
        if self.queue:
            self._serve(self.queue.pop(0))

    def _at(self, when: float, kind: str, sent: float) -> None:
        heapq.heappush(self.events, (when, next(self.seq), kind, sent))


def test_simulated_reject_server_converges_with_few_429s_and_follows_a_raise() -> None:
    sim = Simulation("reject", capacity=6)
    sim.run(until=60.0)
    ideal = 60.0 * 6 / sim.service
    assert sim.served >= 0.8 * ideal
    assert sim.rejected <= 0.05 * (sim.served + sim.rejected)
    assert 5 <= sim.limit.limit <= 7
    sim.capacity = 12
    sim.run(until=180.0)
    assert 11 <= sim.limit.limit <= 13


def test_simulated_queue_server_keeps_the_queue_short_and_follows_a_raise() -> None:
    sim = Simulation("queue", capacity=6)
    sim.run(until=60.0)
    assert sim.served >= 0.95 * 60.0 * 6 / sim.service
    assert sim.area / sim.now <= 2 * 6
    assert 6 <= sim.limit.limit <= 12
    sim.capacity = 12
    sim.run(until=180.0)
    assert sim.limit.limit >= 12


async def test_cancelling_holders_and_waiters_together_loses_no_slot() -> None:
    """A drain timeout cancels every worker in one go: a release that runs before a cancelled
    waiter's task does must skip that waiter, and no slot may be lost or over-counted."""
    limit = FixedLimit(1)
    entered = asyncio.Event()

    async def hold() -> None:
        async with limit.slot():
            entered.set()
            await asyncio.sleep(3600)

    async def wait() -> None:
        async with limit.slot():
            await asyncio.sleep(3600)

    holder = asyncio.create_task(hold())
    await entered.wait()
    waiters = [asyncio.create_task(wait()) for _ in range(2)]
    await asyncio.sleep(0)  # both queue for the one slot
    for task in [*waiters, holder]:  # waiters first: the holder's release then meets them
        task.cancel()
    results = await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert limit.in_flight == 0
    async with limit.slot():  # the slot is free again
        assert limit.in_flight == 1
