"""The one wait-for-an-event-with-a-timeout (backfill.waiting), on the real event loop."""

from __future__ import annotations

import asyncio

import pytest

from backfill.waiting import wait_event


async def test_an_event_set_while_waiting_ends_the_wait_with_true() -> None:
    event = asyncio.Event()
    waiter = asyncio.ensure_future(wait_event(event, 60))
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    assert await asyncio.wait_for(waiter, 5) is True  # long before the 60 s


async def test_the_timeout_ends_the_wait_with_false_and_a_set_event_returns_at_once() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0) is True


async def test_a_cancelled_waiter_is_cancelled_not_timed_out() -> None:
    waiter = asyncio.ensure_future(wait_event(asyncio.Event(), 60))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
