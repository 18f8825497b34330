"""Adaptive concurrency and rate caps, measured against the embedded server's capacity model.

    python -m benchmarks.adaptive [--quick]

(a) A load generator (not the engine yet: the integrator wires it in) sends uploads through a
    concurrency limit to `backfill serve` (a subprocess) that serves 6 requests at once, 200 ms
    each, and answers 429 with `Retry-After: 1` beyond that (reject) or queues them (queue).
    Every attempt is recorded in the limit; a 429 pauses the whole client until its
    Retry-After. The fast case has no capacity and no latency. Reported: the
    achieved rate against the ideal (capacity / service time), the share of 429s, and the
    server's time-weighted mean number of requests held (served plus queued).
(b) The rate cap (`TokenBucket` on the real clock) with several acquirers: the achieved rate
    against the cap over a few seconds.

Targets from issue 15: auto >= 80% of ideal with <= 5% 429s (reject); >= 80% with a mean at the
server <= 2x capacity (queue); the cap within [0.9, 1.05].
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
import uvloop

from backfill.concurrency import AdaptiveLimit, ConcurrencyLimit, FixedLimit
from backfill.ratelimit import TokenBucket

KEY: Final = "bench-secret"
CAPACITY: Final = 6
SERVICE: Final = 0.2
RETRY_AFTER: Final = 1.0
BATCH: Final = 100
WORKERS: Final = 64  # demand always above any limit tried
BACKPRESSURE: Final = frozenset({429, 500, 502, 503, 504})
AUTO_INITIAL: Final = 2
AUTO_MAX: Final = 64
SERVER_START: Final = 30.0
Mode = Literal["reject", "queue", "fast"]


@dataclass
class LoadResult:
    label: str
    mode: str
    succeeded: int
    attempts: int
    throttled: int
    seconds: float
    mean_at_server: float
    final_limit: int

    def row(self) -> dict[str, Any]:
        ideal = CAPACITY / SERVICE if self.mode != "fast" else float("nan")
        rate = self.succeeded / self.seconds
        return {
            "mode": self.mode,
            "limit": self.label,
            "requests": self.succeeded,
            "rate_per_s": round(rate, 1),
            "of_ideal": f"{rate / ideal:.0%}" if self.mode != "fast" else "-",
            "429_share": f"{self.throttled / max(1, self.attempts):.1%}",
            "mean_at_server": round(self.mean_at_server, 2),
            "final_limit": self.final_limit,
        }


def _body() -> bytes:
    record = b'{"type":"home_page_view","user_id":"u1","timestamp":"2026-06-01T12:00:00.000Z"}'
    return b'{"data":[' + b",".join([record] * BATCH) + b"]}"


async def _attempt(
    http: aiohttp.ClientSession, limit: ConcurrencyLimit, body: bytes
) -> tuple[int, float | None]:
    """One attempt under a slot; returns the status and the Retry-After, if any."""
    async with limit.slot():
        started = time.monotonic()
        async with http.post("/v1/interactions", data=body) as response:
            await response.read()
            status, retry_after = response.status, response.headers.get("Retry-After")
        seconds = time.monotonic() - started
        limit.record(seconds if status == 200 else None, backpressure=status in BACKPRESSURE)
    return status, float(retry_after) if retry_after is not None else None


async def _worker(
    http: aiohttp.ClientSession, limit: ConcurrencyLimit, jobs: list[int], tally: dict[str, int]
) -> None:
    body = _body()
    while jobs:
        jobs.pop()
        while True:  # until this upload is acknowledged
            status, retry_after = await _attempt(http, limit, body)
            tally["attempts"] += 1
            if status == 200:
                tally["succeeded"] += 1
                break
            tally["throttled"] += status == 429
            if retry_after is not None:
                limit.pause_until(time.monotonic() + retry_after)


@asynccontextmanager
async def embedded_server(mode: Mode) -> AsyncIterator[str]:
    """`backfill serve` in its own process (its CPU is not the client's), null store."""
    args = ["--store", "null", "--no-validate", "--port", "0"]
    if mode != "fast":
        args += ["--capacity", str(CAPACITY), "--over-capacity", mode]
        args += ["--capacity-retry-after", f"{RETRY_AFTER:g}", "--fault-latency", f"{SERVICE:g}"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill",
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "MISO_API_KEY": KEY},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), SERVER_START)).decode()
        if "listening on " not in line:
            raise RuntimeError(f"the embedded server did not start: {line.strip()!r}")
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), SERVER_START)


async def run_load(
    mode: Mode,
    label: str,
    make_limit: Callable[[], ConcurrencyLimit],
    requests: int,
    budget: float,
) -> LoadResult:
    """`requests` uploads (or what `budget` seconds allow) through a fresh limit and server."""
    limit = make_limit()
    tally = {"attempts": 0, "succeeded": 0, "throttled": 0}
    jobs = list(range(requests))
    async with (
        embedded_server(mode) as url,
        aiohttp.ClientSession(
            url, headers={"X-API-KEY": KEY}, connector=aiohttp.TCPConnector(limit=0)
        ) as http,
    ):
        started = time.monotonic()
        workers = [asyncio.ensure_future(_worker(http, limit, jobs, tally)) for _ in range(WORKERS)]
        _, pending = await asyncio.wait(workers, timeout=budget)
        seconds = time.monotonic() - started
        for task in pending:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        async with http.get("/_admin/stats") as response:
            stats = (await response.json())["capacity"]
    return LoadResult(
        label,
        mode,
        tally["succeeded"],
        tally["attempts"],
        tally["throttled"],
        seconds,
        stats["mean_at_server_busy"],
        limit.limit,
    )


def _auto() -> ConcurrencyLimit:
    return AdaptiveLimit(AUTO_INITIAL, AUTO_MAX)


def _fixed(n: int) -> Callable[[], ConcurrencyLimit]:
    return lambda: FixedLimit(n)


async def capacity_section(quick: bool) -> list[LoadResult]:
    requests, budget = (300, 30.0) if quick else (900, 90.0)
    results = []
    modes: tuple[Literal["reject", "queue"], ...] = ("reject", "queue")
    for mode in modes:
        for label, make in (("auto", _auto), ("fixed 6", _fixed(6)), ("fixed 32", _fixed(32))):
            results.append(await run_load(mode, label, make, requests, budget))
    fast = 2000 if quick else 6000
    for label, make in (("auto", _auto), ("fixed 8", _fixed(8)), ("fixed 16", _fixed(16))):
        results.append(await run_load("fast", label, make, fast, budget))
    return results


async def rate_cap(cap: float, amount: int, acquirers: int, seconds: float) -> dict[str, Any]:
    """Several acquirers take `amount` each from a `cap`/s bucket on the real clock."""
    bucket = TokenBucket(cap)
    taken = 0
    started = time.monotonic()
    last = started

    async def take() -> None:
        nonlocal taken, last
        while time.monotonic() - started < seconds:
            await bucket.acquire(amount)
            taken += amount
            last = time.monotonic()

    await asyncio.gather(*(take() for _ in range(acquirers)))
    rate = taken / (last - started)
    return {
        "cap_per_s": cap,
        "amount": amount,
        "acquirers": acquirers,
        "seconds": round(last - started, 2),
        "rate_per_s": round(rate),
        "of_cap": round(rate / cap, 3),
        "cap_wait_s": round(bucket.waited, 2),
    }


async def rate_section(quick: bool) -> list[dict[str, Any]]:
    seconds = 2.0 if quick else 6.0
    return [
        await rate_cap(50_000, 1_000, 8, seconds),
        await rate_cap(50_000, 10_000, 8, seconds),  # batches larger than the bucket
        await rate_cap(20, 1, 8, seconds),  # a requests-per-second cap
    ]


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


async def main(quick: bool) -> None:
    print_table([result.row() for result in await capacity_section(quick)])
    print()
    print_table(await rate_section(quick))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    uvloop.run(main(parser.parse_args().quick))
