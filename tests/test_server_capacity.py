"""The embedded server's capacity model over real HTTP on 127.0.0.1: reject, queue, live changes.

Requests are held at the server by a per-request latency (the service time) long enough that
the test can see them there through /_admin/stats before it sends the next ones; every count
asserted is exact.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from backfill.errors import UsageError
from backfill.server import Capacity, Faults, RunningServer, start_server
from backfill.server.capacity import CapacityGate
from backfill.server.command import add_parsers, config_from_args
from tests.server_fixtures import AUTH, event, eventually, server_config, upload_body

HOLD = {"X-Fault-Latency": "30"}  # held at the server until the test lets go (cancels)
BODY = upload_body([event(1)])


@pytest.fixture
async def serve(request: pytest.FixtureRequest) -> AsyncIterator[RunningServer]:
    server = await start_server(server_config(capacity=request.param))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def http(serve: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(serve.url, headers=AUTH, connector=connector) as session:
        yield session


async def post(http: aiohttp.ClientSession, headers: dict[str, str] | None = None) -> Any:
    async with http.post("/v1/interactions", data=BODY, headers=headers) as response:
        await response.read()
        return response.status, response.headers.get("Retry-After")


async def capacity_stats(server: RunningServer) -> dict[str, Any]:
    return server.capacity_stats()


async def at_server(server: RunningServer, serving: int, queued: int) -> None:
    async def there() -> bool:
        stats = await capacity_stats(server)
        return bool(stats["serving"] == serving and stats["queued"] == queued)

    await eventually(there)


def holding(http: aiohttp.ClientSession, count: int) -> list[asyncio.Task[Any]]:
    return [asyncio.ensure_future(post(http, HOLD)) for _ in range(count)]


async def let_go(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("serve", [Capacity(limit=3, retry_after=0.5)], indirect=True)
async def test_reject_mode_answers_429_beyond_capacity(
    serve: RunningServer, http: aiohttp.ClientSession
) -> None:
    held = holding(http, 3)
    await at_server(serve, serving=3, queued=0)
    answers = await asyncio.gather(*(post(http) for _ in range(3)))
    assert answers == [(429, "0.5")] * 3
    await let_go(held)
    await at_server(serve, serving=0, queued=0)
    assert await post(http) == (200, None)
    stats = await capacity_stats(serve)
    assert (stats["served"], stats["rejected"], stats["peak_at_server"]) == (4, 3, 3)
    assert (await serve.stats())["requests"]["by_status"] == {"200": 1, "429": 3, "abandoned": 3}
    async with http.get("/_admin/stats") as response:
        assert (await response.json())["capacity"]["rejected"] == 3


@pytest.mark.parametrize("serve", [Capacity(limit=3, over_capacity="queue")], indirect=True)
async def test_queue_mode_serves_everything_in_turn(
    serve: RunningServer, http: aiohttp.ClientSession
) -> None:
    serve.set_faults(Faults(latency="0.05"))
    answers = await asyncio.gather(*(post(http) for _ in range(6)))
    assert answers == [(200, None)] * 6
    stats = await capacity_stats(serve)
    assert (stats["served"], stats["rejected"], stats["serving"], stats["queued"]) == (6, 0, 0, 0)
    assert len(serve.records("interactions")) == 6


@pytest.mark.parametrize("serve", [Capacity(limit=2, over_capacity="queue")], indirect=True)
async def test_queue_holds_the_rest_until_a_place_frees(
    serve: RunningServer, http: aiohttp.ClientSession
) -> None:
    held = holding(http, 2)
    await at_server(serve, serving=2, queued=0)
    queued = asyncio.ensure_future(post(http))
    await at_server(serve, serving=2, queued=1)
    assert not queued.done()
    held[0].cancel()  # the client leaves: its place goes to the queued request
    assert await queued == (200, None)
    await let_go(held)
    stats = await capacity_stats(serve)
    assert (stats["served"], stats["rejected"], stats["peak_at_server"]) == (3, 0, 3)


@pytest.mark.parametrize("serve", [Capacity(limit=1, over_capacity="queue")], indirect=True)
async def test_raising_capacity_at_runtime_admits_the_queue(
    serve: RunningServer, http: aiohttp.ClientSession
) -> None:
    held = holding(http, 1)
    await at_server(serve, serving=1, queued=0)
    waiting = [asyncio.ensure_future(post(http)) for _ in range(2)]
    await at_server(serve, serving=1, queued=2)
    async with http.post("/_admin/capacity", json={"limit": 3}) as response:
        assert response.status == 200
        assert await response.json() == {"limit": 3, "over_capacity": "queue", "retry_after": 1.0}
    assert await asyncio.gather(*waiting) == [(200, None)] * 2
    await let_go(held)
    async with http.get("/_admin/capacity") as response:
        assert (await response.json())["limit"] == 3


@pytest.mark.parametrize("serve", [Capacity(limit=1)], indirect=True)
async def test_runtime_change_applies_to_reject_mode(
    serve: RunningServer, http: aiohttp.ClientSession
) -> None:
    held = holding(http, 1)
    await at_server(serve, serving=1, queued=0)
    assert await post(http) == (429, "1")
    async with http.post("/_admin/capacity", json={"limit": 2, "retry_after": 3}) as response:
        assert response.status == 200
    assert await post(http) == (200, None)
    extra = holding(http, 1)
    await at_server(serve, serving=2, queued=0)
    assert await post(http) == (429, "3")
    await let_go(held + extra)
    assert (await capacity_stats(serve))["rejected"] == 2


@pytest.mark.parametrize("serve", [Capacity(limit=1, over_capacity="queue")], indirect=True)
async def test_a_client_leaving_the_queue_frees_its_place(
    serve: RunningServer, http: aiohttp.ClientSession
) -> None:
    held = holding(http, 1)
    await at_server(serve, serving=1, queued=0)
    leaver = asyncio.ensure_future(post(http))
    await at_server(serve, serving=1, queued=1)
    await let_go([leaver])
    await at_server(serve, serving=1, queued=0)
    await let_go(held)
    await at_server(serve, serving=0, queued=0)
    assert await post(http) == (200, None)
    assert (await capacity_stats(serve))["served"] == 2


@pytest.mark.parametrize("serve", [Capacity()], indirect=True)
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"limit": -1}, "must not be negative"),
        ({"over_capacity": "drop"}, "over_capacity"),
        ({"bogus": 1}, "bogus"),
        ({"retry_after": -2}, "retry_after"),
    ],
)
async def test_bad_capacity_changes_are_refused(
    serve: RunningServer, http: aiohttp.ClientSession, change: dict[str, Any], message: str
) -> None:
    async with http.post("/_admin/capacity", json=change) as response:
        assert response.status == 400
        assert message in (await response.json())["message"]
    assert (await capacity_stats(serve))["limit"] == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    yield Clock()


async def test_mean_at_server_is_time_weighted(clock: Clock) -> None:
    gate = CapacityGate(Capacity(limit=1, over_capacity="queue"), clock)
    assert await gate.enter()
    clock.now += 1.0  # 1 at the server for 1 s
    queued = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0)
    clock.now += 3.0  # 2 at the server for 3 s
    gate.leave()
    assert await queued
    clock.now += 2.0  # 1 at the server for 2 s
    gate.leave()
    clock.now += 4.0  # idle for 4 s
    stats = gate.stats()
    assert stats["mean_at_server"] == pytest.approx((1 + 6 + 2) / 10)
    assert stats["mean_at_server_busy"] == pytest.approx((1 + 6 + 2) / 6)
    assert (stats["busy_seconds"], stats["peak_at_server"], stats["served"]) == (6.0, 2, 2)
    gate.reset_stats()
    assert gate.stats()["mean_at_server"] == 0.0


def test_capacity_flags_make_a_config() -> None:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    argv = ["serve", "--capacity", "6", "--over-capacity", "queue", "--capacity-retry-after", "2"]
    config = config_from_args(parser.parse_args(argv), {})
    assert config.capacity == Capacity(limit=6, over_capacity="queue", retry_after=2.0)
    assert config_from_args(parser.parse_args(["serve"]), {}).capacity == Capacity()
    with pytest.raises(UsageError, match="capacity must not be negative"):
        config_from_args(parser.parse_args(["serve", "--capacity", "-1"]), {})
