"""Issue 15 end to end: the engine with `--concurrency auto`, rate caps and metrics, against
the embedded server's capacity model (or a purpose-built server) on 127.0.0.1.

Assertions are on counts (records stored, answers, the limit the run settled at, requests the
server received in a window), never on how fast something went.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from backfill.cli import build_parser
from backfill.client import Retryable, classify, label
from backfill.config import Secret, Settings, load_settings
from backfill.engine import Engine
from backfill.errors import UsageError
from backfill.metrics import Metrics, export_textfile
from backfill.server import Capacity, Faults, RunningServer, start_server
from tests.helpers import interaction, line, write_lines
from tests.server_fixtures import server_config

FAST = {"progress": "off", "backoff_initial": 0.01, "backoff_max": 0.05}


def settings(tmp_path: Path, url: str, inputs: list[Path], **values: Any) -> Settings:
    s = Settings(
        inputs=[str(p) for p in inputs],
        endpoint=url,
        state_dir=str(tmp_path / "state"),
        **{**FAST, **values},
    )
    s.check()
    return s


def records(tmp_path: Path, count: int, name: str = "in.jsonl") -> tuple[Path, list[bytes]]:
    lines = [line(interaction(i)) for i in range(count)]
    return write_lines(tmp_path / name, lines), lines


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_by_status(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in values.items() if name == "backfill_requests_total")


@pytest.fixture
async def capacity_server() -> AsyncIterator[RunningServer]:
    """Serves 4 requests at once, 20 ms each, and answers 429 (Retry-After 0.05 s) beyond."""
    config = server_config(
        capacity=Capacity(limit=4, retry_after=0.05), faults=Faults(latency="0.02")
    )
    server = await start_server(config)
    try:
        yield server
    finally:
        await server.close()


# -- settings and classification ---------------------------------------------------------


def test_concurrency_auto_from_a_flag_or_a_file_and_a_number_overrides(tmp_path: Path) -> None:
    assert load_settings(None, {"concurrency": "auto"}).concurrency_mode == "auto"
    config = tmp_path / "run.toml"
    config.write_text('concurrency = "auto"\nmax_concurrency = 32\n')
    from_file = load_settings(str(config), {})
    assert (from_file.concurrency_mode, from_file.max_in_flight) == ("auto", 32)
    flag = load_settings(str(config), {"concurrency": 5})
    assert (flag.concurrency_mode, flag.concurrency, flag.max_in_flight) == ("fixed", 5, 5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"concurrency": "auto", "initial_concurrency": 80}, "--initial-concurrency must be"),
        ({"max_concurrency": 0}, "--max-concurrency must be at least 1"),
        ({"max_records_per_second": 0.0}, "--max-records-per-second must be a positive"),
        ({"max_requests_per_second": -1.0}, "--max-requests-per-second must be a positive"),
        ({"metrics_port": 70000}, "--metrics-port must be a port number"),
    ],
)
def test_limits_out_of_range_are_usage_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_settings(None, values)


def test_back_pressure_is_429_5xx_and_timeouts_never_a_refusal() -> None:
    def pressed(status: int, payload: bytes = b"") -> tuple[bool, str]:
        answer = classify(status, {}, payload)
        assert isinstance(answer, Retryable)
        return answer.backpressure, label(answer)

    assert pressed(429) == (True, "429")
    assert pressed(503) == (True, "503")
    assert pressed(400, b'{"message":"request timeout"}') == (True, "400")
    assert pressed(200, b"<html>login</html>") == (False, "200")  # not Miso's: not overload
    assert label(classify(501, {}, b"")) == "refused"  # 501 is not retried, nor back-pressure
    assert label(classify(200, {}, b'{"message":"success"}')) == "2xx"
    assert label(classify(422, {}, b"{}")) == "422"


# -- adaptive concurrency against the capacity model --------------------------------------


async def test_auto_settles_at_the_capacity_and_grows_when_it_is_raised(
    tmp_path: Path, capacity_server: RunningServer
) -> None:
    path, lines = records(tmp_path, 1000)
    s = settings(
        tmp_path,
        capacity_server.url,
        [path],
        batch_size=1,
        concurrency_mode="auto",
        initial_concurrency=1,
        max_concurrency=64,
        metrics_textfile=str(tmp_path / "run.prom"),
    )
    engine = Engine(s, Secret(capacity_server.secret_key))
    assert engine.metrics is not None
    metrics = engine.metrics
    before: list[float] = []  # the limit, sampled while the capacity is 4
    after: list[float] = []  # and once it is 16

    async def raise_capacity() -> None:
        while capacity_server.capacity_stats()["served"] < 200:
            before.append(metrics.value("backfill_concurrency_limit") or 0.0)
            await asyncio.sleep(0.005)
        before.append(capacity_server.capacity_stats()["rejected"])
        capacity_server.set_capacity(Capacity(limit=16, retry_after=0.05))
        while True:
            after.append(metrics.value("backfill_concurrency_limit") or 0.0)
            await asyncio.sleep(0.005)

    raising = asyncio.ensure_future(raise_capacity())
    report = await engine.run()
    raising.cancel()
    assert report["exit_code"] == 0
    assert sorted(capacity_server.records("interactions")) == sorted(lines)
    rejected = before.pop()
    assert 4 <= max(before) <= 7  # reached the capacity of 4 from a start at 1, and no further
    assert rejected <= 20  # <= 10% of the first 200 requests answered 429
    assert max(after) >= 8  # grew past the old capacity once it was raised
    assert report["retries"] == capacity_server.capacity_stats()["rejected"]


class Throttler:
    """Answers the 5th request 429 with Retry-After, the rest `success` after 20 ms; logs the
    body of each request in the order they arrived."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        if len(self.bodies) == 5:
            headers = {"Retry-After": f"{self.retry_after:g}"}
            return web.json_response({"message": "slow down"}, status=429, headers=headers)
        await asyncio.sleep(0.02)
        return web.json_response({"message": "success"})


@pytest.fixture
async def throttler() -> AsyncIterator[tuple[Throttler, str]]:
    throttler = Throttler(retry_after=1.5)
    app = web.Application()
    app.router.add_post("/v1/interactions", throttler.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield throttler, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_retry_after_pauses_every_worker_not_only_the_one_that_got_it(
    tmp_path: Path, throttler: tuple[Throttler, str]
) -> None:
    server, url = throttler
    path, _ = records(tmp_path, 60)
    s = settings(tmp_path, url, [path], batch_size=1, concurrency=4)
    report = await Engine(s, Secret("k")).run()
    assert (report["exit_code"], report["records_accepted"], report["retries"]) == (0, 60, 1)
    assert len(server.bodies) == 61
    throttled = server.bodies[4]
    retried = server.bodies.index(throttled, 5)
    # between the 429 and its retry: at most the 3 requests in flight with it and the 3
    # started when the pause ends; without the pause, the 3 other workers sent all the
    # other 55 batches during the 1.5 s the throttled one waited
    assert retried - 5 <= 6
    assert len(set(server.bodies)) == 60


# -- rate caps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cap", "rate"),
    [("max_records_per_second", 2000.0), ("max_requests_per_second", 20.0)],
)
async def test_a_cap_holds_the_run_back_and_every_record_arrives_once(
    tmp_path: Path, server: RunningServer, cap: str, rate: float
) -> None:
    path, lines = records(tmp_path, 3000)
    prom = tmp_path / "run.prom"
    values: dict[str, Any] = {"batch_size": 100, "concurrency": 8, cap: rate}
    s = settings(tmp_path, server.url, [path], metrics_textfile=str(prom), **values)
    report = await Engine(s, Secret(server.secret_key)).run()
    assert report["exit_code"] == 0
    assert sorted(server.records("interactions")) == sorted(lines)
    at_exit = samples(prom.read_text())
    assert at_exit[("backfill_rate_limit_wait_seconds_total", ())] > 0  # the cap was engaged
    assert at_exit[("backfill_requests_total", (("status", "2xx"),))] == 30
    assert report["batches_sent"] == 30 and report["retries"] == 0


# -- metrics -----------------------------------------------------------------------------


@pytest.fixture
async def slow_server() -> AsyncIterator[RunningServer]:
    """100 ms a request; user-3's records are refused (422); the first request gets a 503."""
    faults = Faults(latency="0.1", reject_user_id="^user-3$", fail_first=1)
    server = await start_server(server_config(faults=faults))
    try:
        yield server
    finally:
        await server.close()


async def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_metrics_answer_during_a_run_and_match_the_report_at_exit(
    tmp_path: Path, slow_server: RunningServer
) -> None:
    lines = [line(interaction(i)) for i in range(200)]
    lines[10:10] = [b"not json", b'{"type":"teleport"}', b"{}"]  # 3 invalid
    path = write_lines(tmp_path / "in.jsonl", lines)
    prom = tmp_path / "run.prom"
    s = settings(
        tmp_path,
        slow_server.url,
        [path],
        batch_size=10,
        concurrency=2,
        metrics_port=0,
        metrics_textfile=str(prom),
    )
    out = io.StringIO()
    run = asyncio.ensure_future(Engine(s, Secret(slow_server.secret_key), out=out).run())
    await wait_for(lambda: "metrics: " in out.getvalue())
    url = out.getvalue().split("metrics: ", 1)[1].split()[0]
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: len(slow_server.records("interactions")) >= 20)
        async with http.get(url) as response:
            assert response.status == 200
            during = samples(await response.text())
    assert not run.done()  # scraped while the run was in flight
    assert during[("backfill_concurrency_limit", ())] == 2.0
    assert 0 < during[("backfill_records_accepted_total", ())] < 200
    report = await run
    assert report["exit_code"] == 0
    refused = sum(1 for r in lines if b'"user-3"' in r)
    assert report["records_rejected_by_server"] == refused > 0
    at_exit = samples(prom.read_text())
    for name, key in [
        ("records_read", "records_read"),
        ("records_valid", "records_valid"),
        ("records_invalid", "records_invalid"),
        ("records_accepted", "records_accepted"),
        ("records_rejected", "records_rejected_by_server"),
        ("retries", "retries"),
    ]:
        assert at_exit[(f"backfill_{name}_total", ())] == report[key], name
    assert report["retries"] == 1
    assert requests_by_status(at_exit) == report["batches_sent"]
    assert at_exit[("backfill_requests_total", (("status", "503"),))] == 1
    assert at_exit[("backfill_request_duration_seconds_count", ())] == report["batches_sent"]
    assert len(slow_server.records("interactions")) == 200 - refused


async def test_a_taken_metrics_port_and_an_unwritable_textfile_stop_before_sending(
    tmp_path: Path, server: RunningServer
) -> None:
    path, _ = records(tmp_path, 10)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = settings(tmp_path, server.url, [path], metrics_port=port)
        report = await Engine(s, Secret(server.secret_key)).run()
    assert report["exit_code"] == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}: the port is taken" in report["error"]
    missing = tmp_path / "no-such-dir" / "run.prom"
    s = settings(tmp_path, server.url, [path], metrics_textfile=str(missing), restart=True)
    report = await Engine(s, Secret(server.secret_key)).run()
    assert report["exit_code"] == 2
    assert f"cannot write the metrics file {missing}" in report["error"]
    assert server.records("interactions") == []


async def test_cli_auto_shows_the_limit_on_the_progress_line_and_writes_the_textfile(
    tmp_path: Path, capacity_server: RunningServer
) -> None:
    path, lines = records(tmp_path, 200)
    prom = tmp_path / "run.prom"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", "run", str(path),
        "--endpoint", capacity_server.url, "--state-dir", str(tmp_path / "state"),
        "--batch-size", "1", "--concurrency", "auto", "--initial-concurrency", "2",
        "--progress", "log", "--progress-interval", "0.2", "--metrics-textfile", str(prom),
        "--backoff-initial", "0.01", "--backoff-max", "0.05",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MISO_API_KEY": capacity_server.secret_key},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    progress = [x for x in err.decode().splitlines() if x.startswith("progress:")]
    assert progress and all(" | concurrency " in x for x in progress)
    assert sorted(capacity_server.records("interactions")) == sorted(lines)
    at_exit = samples(prom.read_text())
    assert at_exit[("backfill_records_accepted_total", ())] == 200
    assert 1 <= at_exit[("backfill_concurrency_limit", ())] <= 64


def test_the_flag_takes_a_number_or_auto_and_nothing_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "x", "--concurrency", "auto"]).concurrency == "auto"
    assert parser.parse_args(["run", "x", "--concurrency", "12"]).concurrency == 12
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["run", "x", "--concurrency", "lots"])
    assert stopped.value.code == 2
    assert "--concurrency: a number or auto, not 'lots'" in capsys.readouterr().err


async def test_the_textfile_is_rewritten_while_the_run_goes_and_a_failure_is_warned_once(
    tmp_path: Path,
) -> None:
    metrics, done, warnings = Metrics(), asyncio.Event(), list[str]()
    folder = tmp_path / "collector"
    folder.mkdir()
    prom = folder / "run.prom"
    task = asyncio.ensure_future(export_textfile(metrics, str(prom), 0.01, done, warnings.append))
    metrics.records_read.inc(7)
    await wait_for(prom.exists)
    await wait_for(lambda: "backfill_records_read_total 7.0" in prom.read_text())
    prom.unlink()
    folder.rmdir()  # the collector's directory is gone mid-run
    await asyncio.wait_for(task, 10)  # the exporter gives up rather than failing the run
    assert len(warnings) == 1
    assert f"cannot write the metrics file {prom}" in warnings[0]
    assert "no longer updated" in warnings[0]
    assert not done.is_set()
