"""The careful baseline: asyncio + aiohttp + stdlib `json`, 8 requests in flight.

What a competent engineer writes by hand in a day: gzip inflated on a worker thread, every line
parsed with `json.loads` and given a minimal sanity check (a JSON object with a `type`, a
`timestamp` and a user), batches of 10,000 encoded with `json.dumps`, a bounded queue in
front of 8 workers sharing one keep-alive session, and retries with backoff on 429/5xx.
No checkpoint, no dead-letter file, no schema validation.

    MISO_API_KEY=... python -m benchmarks.baselines.careful --endpoint URL FILE...
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import sys
from typing import Any

import aiohttp

BATCH = 10_000
READ = 1 << 20
RETRY = frozenset({429, 500, 502, 503, 504})


async def read_batches(
    files: list[str], queue: asyncio.Queue[bytes | None], stats: dict[str, int]
) -> None:
    batch: list[dict[str, Any]] = []
    for name in files:
        with gzip.open(name, "rb") as fh:
            carry = b""
            while chunk := await asyncio.to_thread(fh.read, READ):
                lines = (carry + chunk).split(b"\n")
                carry = lines.pop()
                for line in lines:
                    record = _parsed(line, stats)
                    if record is not None:
                        batch.append(record)
                        if len(batch) == BATCH:
                            await queue.put(json.dumps({"data": batch}).encode())
                            batch = []
                stats["bytes"] += len(chunk)
            if carry and (record := _parsed(carry, stats)) is not None:
                batch.append(record)
    if batch:
        await queue.put(json.dumps({"data": batch}).encode())


def _parsed(line: bytes, stats: dict[str, int]) -> dict[str, Any] | None:
    stats["records"] += 1
    try:
        record = json.loads(line)
    except ValueError:
        stats["skipped"] += 1
        return None
    if (
        not isinstance(record, dict)
        or "type" not in record
        or "timestamp" not in record
        or not (record.get("user_id") or record.get("anonymous_id"))
    ):
        stats["skipped"] += 1
        return None
    return record


async def send(
    session: aiohttp.ClientSession, url: str, queue: asyncio.Queue[bytes | None]
) -> None:
    while (body := await queue.get()) is not None:
        for attempt in range(8):
            async with session.post(url, data=body) as resp:
                await resp.read()
                if resp.status not in RETRY:
                    resp.raise_for_status()
                    break
            await asyncio.sleep(min(0.5 * 2**attempt, 30))
        else:
            raise RuntimeError("gave up after 8 attempts")


async def load(endpoint: str, key: str, files: list[str], concurrency: int) -> dict[str, int]:
    stats = {"records": 0, "bytes": 0, "skipped": 0}
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency)
    headers = {"X-API-KEY": key, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        url = f"{endpoint}/v1/interactions"
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(send(session, url, queue)) for _ in range(concurrency)]
            await read_batches(files, queue, stats)
            for _ in workers:
                await queue.put(None)
    return stats


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="careful asyncio baseline")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    stats = asyncio.run(
        load(args.endpoint, os.environ["MISO_API_KEY"], args.files, args.concurrency)
    )
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
