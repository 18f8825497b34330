"""Virtual time for tests of code that takes an injected clock and sleep: no real waiting."""

from __future__ import annotations

import asyncio


class FakeTime:
    """A clock the test moves; `sleep` returns once the clock has passed its deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in list(self._sleepers):
            if deadline <= self.now:
                self._sleepers.remove((deadline, future))
                if not future.done():
                    future.set_result(None)
        await settle()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class JumpingTime(FakeTime):
    """Sleeping moves the clock by exactly the time asked: for one sleeper at a time."""

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)
