"""--follow: how long a record appended to a followed file takes to reach the server.

    python -m benchmarks.follow [--quick]        (BENCH_QUICK=1 also means --quick)

`backfill run DIR --follow` (a subprocess, default --linger, --poll-interval and
--idle-timeout, as a user runs it) loads a history file, then follows the directory while a
writer in this process appends: a trickle (one record every 0.25 s, half of them split
across two writes 50 ms apart) and bursts (hundreds of records, cut in the middle of a line),
to a growing file and, a third and two thirds of the way through, to new files. Each record
carries its write time (`context.custom_context.sent`, and the same moment as its
`timestamp`); the embedded server (in this process, memory store) is watched every 10 ms
and each new record's arrival time minus its write time is its latency (resolution 10 ms,
a split line counted from its first write). Reported: p50, p95 and max over every record
written while following, that each arrived exactly once, and the follower's peak RSS.

Target from issue 18: p95 <= 3 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import uvloop

from backfill.server import RunningServer, ServerConfig, start_server
from benchmarks.harness import KEY, BenchError, backfill, child_env, say, scratch_dir
from benchmarks.plan import current
from benchmarks.report import Check, Section, table

TARGET_P95: Final = 3.0
TICK: Final = 0.25  # seconds between trickle records
SPLIT_PAUSE: Final = 0.05
WATCH: Final = 0.01


def record(n: int, sent: float | None) -> bytes:
    moment = datetime.fromtimestamp(sent if sent is not None else 1.78e9, UTC)
    custom: dict[str, Any] = {"n": n} if sent is None else {"n": n, "sent": sent}
    return json.dumps(
        {
            "type": "product_detail_page_view",
            "user_id": f"user-{n % 97}",
            "product_ids": [f"p-{n % 1000}"],
            "timestamp": moment.isoformat().replace("+00:00", "Z"),
            "context": {"custom_context": custom},
        },
        separators=(",", ":"),
    ).encode()


class Writer:
    """Appends as a site's logger does: one os.write per piece, O_APPEND."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.next = logs, 1_000_000
        self.written = 0

    async def append(self, name: str, count: int, split: bool) -> None:
        first, sent = self.next, time.time()
        self.next += count
        data = b"".join(record(n, sent) + b"\n" for n in range(first, first + count))
        fd = os.open(self.logs / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if split:
                cut = len(data) - len(record(first, sent)) // 2
                os.write(fd, data[:cut])
                await asyncio.sleep(SPLIT_PAUSE)
                data = data[cut:]
            os.write(fd, data)
        finally:
            os.close(fd)
        self.written += count

    async def run(self, seconds: float, burst: int) -> None:
        ticks = int(seconds / TICK)
        for i in range(ticks):
            name = f"live-{'abc'[min(2, 3 * i // ticks)]}.jsonl"  # new files at 1/3 and 2/3
            await self.append(name, 1, split=i % 2 == 0)
            if i % 8 == 4:
                await self.append(name, burst, split=True)
            await asyncio.sleep(TICK)


class Arrivals:
    """Watches the server's store: each new record's latency, and every n seen."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.seen = 0
        self.latencies: list[float] = []
        self.numbers: list[int] = []

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            total = (await self.server.stats())["interactions"]["total"]
            if total > self.seen:
                now = time.time()
                for raw in self.server.records("interactions")[self.seen :]:
                    custom = json.loads(raw)["context"]["custom_context"]
                    self.numbers.append(custom["n"])
                    if "sent" in custom:
                        self.latencies.append(now - custom["sent"])
                self.seen = len(self.numbers)
            await asyncio.sleep(WATCH)


async def measure(history: int, seconds: float, burst: int) -> dict[str, Any]:
    work = scratch_dir("follow-")
    logs = work / "logs"
    logs.mkdir()
    (logs / "history.jsonl").write_bytes(b"".join(record(n, None) + b"\n" for n in range(history)))
    server = await start_server(ServerConfig(port=0, store="memory", secret_key=KEY))
    arrivals, stop = Arrivals(server), asyncio.Event()
    watcher = asyncio.create_task(arrivals.watch(stop))
    cmd = backfill(
        "run", str(logs), "--follow", "--endpoint", server.url, "--state-dir",
        str(work / "state"), "--progress", "off", "--report", str(work / "report.json"),
    )  # fmt: skip
    with open(work / "follower.log", "wb") as log:  # its report, and any error
        proc = await asyncio.create_subprocess_exec(*cmd, env=child_env(), stdout=log, stderr=log)
    rss: list[int] = []
    try:
        await _until(proc, lambda: arrivals.seen >= history, 300, "the history to arrive")
        rss.append(_status_kb(proc.pid, b"VmRSS:"))
        writer = Writer(logs)
        await writer.run(seconds, burst)
        expected = history + writer.written
        await _until(proc, lambda: arrivals.seen >= expected, 60, "every appended record")
        rss += [_status_kb(proc.pid, b"VmRSS:"), _status_kb(proc.pid, b"VmHWM:")]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await proc.wait()
        stop.set()
        await watcher
        await server.close()
    if code != 130:
        raise BenchError(f"the follower ended with exit {code}, expected 130: {work}/follower.log")
    wanted = set(range(history)) | set(range(1_000_000, 1_000_000 + writer.written))
    return _result(arrivals, wanted, rss)


def _status_kb(pid: int, field: bytes) -> int:
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            return next((int(x.split()[1]) for x in fh if x.startswith(field)), 0)
    except (OSError, ValueError, IndexError):
        return 0


async def _until(proc: asyncio.subprocess.Process, check: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                if proc.returncode is not None:
                    raise BenchError(f"the follower ended early (exit {proc.returncode})")
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def _result(arrivals: Arrivals, wanted: set[int], rss: list[int]) -> dict[str, Any]:
    lat = sorted(arrivals.latencies)
    if not lat:
        raise BenchError("no appended record arrived")

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))]

    return {
        "records_followed": len(lat),
        "p50_s": round(pct(0.50), 3),
        "p95_s": round(pct(0.95), 3),
        "max_s": round(lat[-1], 3),
        "exactly_once": sorted(arrivals.numbers) == sorted(wanted),
        "rss_after_history_mb": round(rss[0] / 1024, 1),
        "rss_at_end_mb": round(rss[1] / 1024, 1),
        "peak_rss_mb": round(rss[2] / 1024, 1),
    }


def run(quick: bool) -> dict[str, Any]:
    history, seconds, burst = (5_000, 12.0, 300) if quick else (50_000, 40.0, 2_000)
    say(f"   follow: {history:,} history records, then {seconds:.0f} s of appends")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(measure(history, seconds, burst))
    result.update(history=history, seconds=seconds, burst=burst)
    return result


def section(quick: bool) -> Section:
    """The `make bench` section (issue 18)."""
    r = run(quick)
    markdown = (
        f"`backfill run --follow` (default --linger 1 s, --poll-interval 0.25 s): "
        f"{r['history']:,} history records, then {r['seconds']:.0f} s of a trickle "
        f"(4 records/s) and bursts of {r['burst']:,}, to a growing file and two new files, "
        "lines split across writes; latency = arrival at the server - write time.\n\n"
        + table(
            [
                "records followed",
                "p50 (s)",
                "p95 (s)",
                "max (s)",
                "exactly once",
                "RSS MB after history / at end / peak",
            ],
            [
                [
                    r["records_followed"],
                    r["p50_s"],
                    r["p95_s"],
                    r["max_s"],
                    r["exactly_once"],
                    f"{r['rss_after_history_mb']} / {r['rss_at_end_mb']} / {r['peak_rss_mb']}",
                ]
            ],
        )
    )
    p95, once = r["p95_s"], r["exactly_once"]
    checks = [
        Check(f"follow: p95 append -> arrival <= {TARGET_P95:.0f} s", f"{p95:.2f} s", p95 <= 3),
        Check("follow: every appended record arrives exactly once", str(once), once),
    ]
    return Section("follow", "follow: append to arrival", markdown, r, checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.follow")
    parser.add_argument("--quick", action="store_true", help="12 s of appends, not 40 s")
    args = parser.parse_args(argv)
    s = section(args.quick or current().quick)
    print(f"## {s.title}\n\n{s.markdown}\n")
    for c in s.checks:
        print(f"{'PASS' if c.passed else 'FAIL'}  {c.target}: {c.measured}")
    return 0 if all(c.passed for c in s.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
