"""Waiting for an event, never longer than a timeout (every wait has one).

A backoff that a stop cuts short, a progress tick, a metrics write: each sleeps until its
next turn unless the run ends first, and needs to know which of the two happened.
"""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """True when `event` is set within `seconds` (at once if it already is), else False.
    A cancellation of the caller still propagates: only the timeout is swallowed."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
