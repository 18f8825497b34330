"""One batch's journey at the API (backfill.delivery), against real servers on 127.0.0.1.

Misbehaving servers that the embedded one cannot imitate (a redirect to another origin, a
login page answering 200) are purpose-built here; the rest uses the embedded server's faults.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from backfill.client import Accepted, Request
from backfill.concurrency import AdaptiveLimit, FixedLimit
from backfill.config import Secret, Settings
from backfill.delivery import ConcurrencyLimit, RateCap, open_client, rate_caps, split_budget
from backfill.errors import ServerRefused
from backfill.maintenance import remote_ids
from backfill.server import Faults, RunningServer
from backfill.targets import target_for
from tests.helpers import dead_letters, interaction, line, numbers, run_engine, write_lines
from tests.server_fixtures import product

KEY = "sk-delivery-test-key"


class Recorder:
    """A tiny server answering every request with `answer(request)`; it keeps what came."""

    def __init__(self, answer: Callable[[web.Request], web.Response]) -> None:
        self.answer = answer
        self.received: list[tuple[str, str, str | None, bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((request.method, request.path, request.headers.get("X-API-KEY"), body))
        return self.answer(request)


@asynccontextmanager
async def listening(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[str]:
    """Serves every path with `handler` on a free loopback port; yields the base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serving(answer: Callable[[web.Request], web.Response]) -> AsyncIterator[Recorder]:
    recorder = Recorder(answer)
    async with listening(recorder.handle) as url:
        recorder.url = url
        yield recorder


def redirect(status: int, to: str) -> Callable[[web.Request], web.Response]:
    return lambda request: web.Response(status=status, headers={"Location": to + request.path})


def ok(request: web.Request) -> web.Response:
    return web.json_response({"message": "success"})


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "backfill", *args]


async def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *cli(*args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, (out + err).decode()


def records(tmp_path: Path, n: int, name: str = "a.jsonl") -> Path:
    return write_lines(tmp_path / name, [line(interaction(i)) for i in range(n)])


# -- 13.1: limits are layers around the one call -----------------------------------------


async def test_the_concurrency_layer_bounds_attempts_in_flight() -> None:
    in_flight, peak = 0, 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({"message": "success"})

    async with listening(slow) as url:
        settings = Settings(endpoint=url, concurrency=8)
        async with open_client(settings, Secret(KEY), target_for("interactions")) as client:
            limited = ConcurrencyLimit(client, 3)
            body = Request(b'{"data":[]}', 0)
            answers = await asyncio.gather(*(limited.send(body) for _ in range(12)))
    assert all(isinstance(a, Accepted) for a in answers) and len(answers) == 12
    assert peak == 3


# -- 12.2: redirects are never followed ----------------------------------------------------


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_stops_the_run_and_nothing_reaches_the_other_origin(
    tmp_path: Path, status: int
) -> None:
    path = records(tmp_path, 10)
    async with serving(ok) as other, serving(redirect(status, other.url)) as front:
        code, output = await run_cli(
            ["run", str(path), "--endpoint", front.url, "--state-dir", str(tmp_path / "s"),
             "--progress", "off"],
            {**os.environ, "MISO_API_KEY": KEY},
        )  # fmt: skip
    assert code == 3, output
    assert (
        f"the server answered HTTP {status} redirecting to {other.url}/v1/interactions: "
        "backfill never follows redirects" in output
    )
    assert other.received == []  # no key, no body ever left for the other origin
    assert [(m, p) for m, p, _, _ in front.received] == [("POST", "/v1/interactions")]
    assert KEY not in output


async def test_task_status_deletes_and_id_listing_never_follow_redirects(tmp_path: Path) -> None:
    def front_answer(request: web.Request) -> web.Response:
        if request.method == "POST" and request.path == "/v1/products":
            return web.json_response({"message": "success", "data": {"task_id": "t1"}})
        return web.Response(status=308, headers={"Location": other.url + request.path})

    async with serving(ok) as other, serving(front_answer) as front:
        ids = write_lines(tmp_path / "ids.txt", [b"p1", b"p2"])
        catalog = write_lines(tmp_path / "p.jsonl", [b'{"product_id":"p1","title":"One"}'])
        upload = await run_engine(
            tmp_path / "up", front.url, KEY, [str(catalog)], kind="products", wait_tasks=True
        )
        delete = await run_engine(
            tmp_path / "del", front.url, KEY, [str(ids)], kind="products", operation="delete"
        )
        with pytest.raises(ServerRefused, match="HTTP 308 redirecting to"):
            await remote_ids(front.url, "products", Secret(KEY), 10.0)
    assert upload["exit_code"] == 3 and "HTTP 308 redirecting to" in upload["error"]
    assert "/v1/products/_status/t1" in upload["error"]
    assert delete["exit_code"] == 3 and "/v1/products/_delete:" in delete["error"]
    assert other.received == []
    assert [p for _, p, _, _ in front.received] == [
        "/v1/products",
        "/v1/products/_status/t1",
        "/v1/products/_delete",
        "/v1/products/_ids",
    ]


# -- 12.3: only Miso's answer acknowledges -------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "said"),
    [
        ("text/html", b"<html>Please sign in</html>", "200 text/html: is a proxy or a login page"),
        ("application/json", b"", "200 application/json: an empty body"),
        ("application/json", b'{"ok": true}', "200 application/json: not Miso's answer"),
        ("application/json", b"[]", "200 application/json: not Miso's answer: []"),
    ],
)
async def test_a_2xx_that_is_not_misos_answer_acknowledges_nothing(
    tmp_path: Path, server: RunningServer, content_type: str, body: bytes, said: str
) -> None:
    path = records(tmp_path, 10)

    def answer(request: web.Request) -> web.Response:
        return web.Response(status=200, body=body, headers={"Content-Type": content_type})

    async with serving(answer) as proxy:
        report = await run_engine(
            tmp_path, proxy.url, KEY, [str(path)], max_attempts=2, request_timeout=10
        )
    assert report["exit_code"] == 3
    assert "gave up after 2 attempts" in report["error"] and said in report["error"]
    assert report["records_accepted"] == 0 and len(proxy.received) == 2
    # the real API afterwards gets every record: nothing was taken as acknowledged
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)])
    assert sorted(numbers(server.records("interactions"))) == list(range(10))
    assert report["exit_code"] == 0 and report["records_accepted"] == 10
    assert report["possibly_duplicated"] == 10  # the proxy may have passed it on


# -- 12.4: a systematic server rejection stops the run -------------------------------------


async def test_422_naming_no_record_stops_within_the_split_budget(
    tmp_path: Path, server: RunningServer
) -> None:
    path = records(tmp_path, 3_000)
    server.set_faults(Faults(fail_first=10**6, fail_status=422))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=1_000, concurrency=1
    )
    assert report["exit_code"] == 3
    assert "lines 1-1000: the server kept refusing parts of this batch" in report["error"]
    assert (await server.stats())["requests"]["received"] == split_budget(1_000) == 84
    assert dead_letters(tmp_path / "state" / "dead-letter.jsonl") == []
    server.set_faults(Faults())
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)])
    assert sorted(numbers(server.records("interactions"))) == list(range(3_000))
    assert report["records_accepted"] == 3_000 and report["possibly_duplicated"] == 0


async def test_413_for_every_record_stops_at_the_rejected_ratio(
    tmp_path: Path, server: RunningServer
) -> None:
    path = records(tmp_path, 2_000)
    server.set_faults(Faults(max_body_bytes=1))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=8, concurrency=1,
        rejected_ratio_window=200,
    )  # fmt: skip
    assert report["exit_code"] == 3
    assert "refused 200 of the 200 records sent so far" in report["error"]
    assert "--max-rejected-ratio 0.5" in report["error"]
    # 25 batches of 8 records, 15 requests each to isolate every record; the 25th is not
    # dead-lettered (nothing of it was stored: it is read again on resume)
    assert (await server.stats())["requests"]["received"] == 25 * 15
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert len(entries) == 24 * 8 and all("413" in e["reason"] for e in entries)
    assert server.records("interactions") == []


async def test_422_refusing_most_records_stops_after_the_minimum_sample(
    tmp_path: Path, server: RunningServer
) -> None:
    rows = [line(interaction(i, user=None if i % 10 == 0 else f"bad-{i}")) for i in range(5_000)]
    path = write_lines(tmp_path / "a.jsonl", rows)
    server.set_faults(Faults(reject_user_id="^bad-"))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=100, concurrency=1
    )
    assert report["exit_code"] == 3
    assert (
        "refused 900 of the 1,000 records sent so far (90% > --max-rejected-ratio 0.5)"
        in (report["error"])
    )
    assert sorted(numbers(server.records("interactions"))) == list(range(0, 1_000, 10))
    assert len(dead_letters(tmp_path / "state" / "dead-letter.jsonl")) == 900
    assert (await server.stats())["requests"]["received"] == 20
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], max_rejected_ratio=1.0
    )
    assert report["exit_code"] == 0 and report["records_accepted"] == 500
    assert Counter(numbers(server.records("interactions"))) == Counter(range(0, 5_000, 10))
    assert len(dead_letters(tmp_path / "state" / "dead-letter.jsonl")) == 4_500


# -- 12.17: a signal ends a backoff at once; never-stored batches are not ambiguous --------


async def test_sigint_during_a_backoff_stops_at_once_and_nothing_is_ambiguous(
    tmp_path: Path, server: RunningServer
) -> None:
    path = records(tmp_path, 1_000)
    report_path = tmp_path / "report.json"
    args = [
        "run", str(path), "--endpoint", server.url, "--state-dir", str(tmp_path / "state"),
        "--batch-size", "250", "--concurrency", "2", "--progress", "off",
        "--drain-timeout", "60", "--report", str(report_path),
    ]  # fmt: skip
    env = {**os.environ, "MISO_API_KEY": server.secret_key}
    server.set_faults(Faults(throttle_rate=1.0, retry_after=120))
    proc = await asyncio.create_subprocess_exec(
        *cli(*args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    while (await server.stats())["requests"]["by_status"].get("429", 0) < 2:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)  # Retry-After is 120 s
    assert proc.returncode == 130, (out + err).decode()
    assert json.loads(report_path.read_text())["records_accepted"] == 0
    server.set_faults(Faults())
    code, output = await run_cli(args, env)
    assert code == 0, output
    report = json.loads(report_path.read_text())
    assert sorted(numbers(server.records("interactions"))) == list(range(1_000))
    assert report["possibly_duplicated"] == 0 and report["ambiguous_batches"] == []


class HeldRequest:
    """A server that holds the first request until `release`, then answers `status`."""

    def __init__(self, status: int, body: dict[str, str]) -> None:
        self.arrived, self.release = asyncio.Event(), asyncio.Event()
        self.status, self.body = status, body

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.set()
        await self.release.wait()
        return web.json_response(self.body, status=self.status)


async def interrupt_run(
    held: HeldRequest, url: str, tmp_path: Path, *flags: str
) -> asyncio.subprocess.Process:
    """A `backfill run` whose one request is held at the server, once it has taken a SIGINT
    (said "SIGINT: stopping"); that line is left out of what the process says next."""
    proc = await asyncio.create_subprocess_exec(
        *cli("run", str(records(tmp_path, 10)), "--endpoint", url,
             "--state-dir", str(tmp_path / "state"), "--concurrency", "1",
             "--progress", "off", *flags),
        env={**os.environ, "MISO_API_KEY": KEY},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    await asyncio.wait_for(held.arrived.wait(), 30)
    proc.send_signal(signal.SIGINT)
    while b"SIGINT: stopping" not in await asyncio.wait_for(proc.stderr.readline(), 30):
        pass
    return proc


async def test_a_refused_key_during_the_sigint_drain_is_the_outcome_not_130(
    tmp_path: Path,
) -> None:
    """The request in flight at the Ctrl-C is answered 401 during the drain: the run ends on
    the 401 (exit 3, its message), not as a mere interruption that a rerun would fix."""
    report_path = tmp_path / "report.json"
    held = HeldRequest(401, {"message": "invalid api key."})
    async with listening(held.handle) as url:
        proc = await interrupt_run(
            held, url, tmp_path, "--drain-timeout", "60", "--report", str(report_path)
        )
        held.release.set()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    output = (out + err).decode()
    assert proc.returncode == 3, output
    report = json.loads(report_path.read_text())
    assert (report["status"], report["exit_code"]) == ("stopped", 3)
    assert report["error"] == "the API key was refused (HTTP 401): check the key in $MISO_API_KEY"
    assert "backfill stopped (exit 3)" in output and KEY not in output


async def test_a_checkpoint_unwritable_at_the_end_of_a_drain_is_the_outcome_not_130(
    tmp_path: Path,
) -> None:
    """Ctrl-C, the request in flight outlasts --drain-timeout (cancelled: nothing to record),
    and the leg's last checkpoint write fails: the user must hear of the state dir (exit 3)."""
    held = HeldRequest(200, {"message": "success"})
    async with listening(held.handle) as url:
        proc = await interrupt_run(held, url, tmp_path, "--drain-timeout", "1")
        # from now on no file of the run can be written (as on a failing disk); Python
        # ignores SIGXFSZ, so each write fails with EFBIG
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, 0))
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        held.release.set()  # long after the client gave up on it
    output = (out + err).decode()
    assert proc.returncode == 3, output
    assert f"cannot write the checkpoint in the state dir {tmp_path / 'state'}" in output
    assert "backfill stopped (exit 3)" in output and "Traceback" not in output


async def test_a_lost_answer_on_the_last_attempt_stays_ambiguous(
    tmp_path: Path, server: RunningServer
) -> None:
    path = records(tmp_path, 300)
    server.set_faults(Faults(lost_answer_rate=1.0))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=100, concurrency=1,
        max_attempts=1,
    )  # fmt: skip
    assert report["exit_code"] == 3 and "gave up after 1 attempts" in report["error"]
    assert sorted(numbers(server.records("interactions"))) == list(range(100))
    server.set_faults(Faults())
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)])
    stored = Counter(numbers(server.records("interactions")))
    assert stored == Counter([*range(300), *range(100)])  # stored twice: must be reported
    assert report["possibly_duplicated"] == 100
    assert [(a["first_line"], a["last_line"]) for a in report["ambiguous_batches"]] == [(1, 100)]


# -- 12.20 / 13.6: a 401 names the key source actually used --------------------------------


async def test_401_names_the_configured_key_source(tmp_path: Path, server: RunningServer) -> None:
    path = records(tmp_path, 5)
    config = tmp_path / "miso.toml"
    config.write_text('api_key_env = "SHOP_MISO_KEY"\n')
    key_file = tmp_path / "key.txt"
    key_file.write_text("sk-wrong-from-file\n")
    base = ["run", str(path), "--endpoint", server.url, "--progress", "off"]
    env = {**os.environ, "SHOP_MISO_KEY": "sk-wrong-from-env"}
    code, output = await run_cli(
        [*base, "--config", str(config), "--state-dir", str(tmp_path / "a")], env
    )
    assert code == 3 and "check the key in $SHOP_MISO_KEY" in output
    assert "sk-wrong-from-env" not in output
    code, output = await run_cli(
        [*base, "--api-key-file", str(key_file), "--state-dir", str(tmp_path / "b")], env
    )
    assert code == 3 and f"check the key in --api-key-file {key_file}" in output
    assert "sk-wrong-from-file" not in output


# -- issue 15: the limit layer records every attempt; the cap layer holds every attempt -----


@pytest.mark.parametrize(
    ("status", "cut"),
    [(429, True), (503, True), (500, True), (501, False), (404, False), (422, False)],
)
async def test_the_limit_is_cut_by_back_pressure_and_only_by_it(status: int, cut: bool) -> None:
    def answer(request: web.Request) -> web.Response:
        return web.json_response({"message": "no", "data": []}, status=status)

    async with serving(answer) as server:
        settings = Settings(endpoint=server.url)
        async with open_client(settings, Secret(KEY), target_for("interactions")) as client:
            limit = AdaptiveLimit(10, 20)
            layer = ConcurrencyLimit(client, limit)
            await layer.send(Request(b'{"data":[]}', 0))
    assert len(server.received) == 1
    assert limit.limit == (9 if cut else 10)


async def test_a_task_polls_round_trip_never_feeds_the_adaptive_mean() -> None:
    """A status GET is quicker than an upload: averaged in, uploads would look slow."""
    async with serving(ok) as server:
        settings = Settings(endpoint=server.url)
        async with open_client(settings, Secret(KEY), target_for("products")) as client:
            limit = AdaptiveLimit(10, 20)
            layer = ConcurrencyLimit(client, limit)
            answer = await layer.send(Request(b"", 0, path="/v1/products/_status/t1"))
            assert isinstance(answer, Accepted) and limit.rtt_mean is None
            await layer.send(Request(b'{"data":[]}', 0))
            assert limit.rtt_mean is not None  # an upload's round trip closes the window
    assert [(m, p) for m, p, _, _ in server.received] == [
        ("GET", "/v1/products/_status/t1"), ("POST", "/v1/products")
    ]  # fmt: skip


async def test_a_retry_after_pauses_the_limit_for_every_request() -> None:
    def throttled(request: web.Request) -> web.Response:
        return web.json_response({"message": "slow"}, status=429, headers={"Retry-After": "30"})

    async with serving(throttled) as server:
        settings = Settings(endpoint=server.url)
        async with open_client(settings, Secret(KEY), target_for("interactions")) as client:
            layer = ConcurrencyLimit(client, FixedLimit(4))
            before = time.monotonic()
            await layer.send(Request(b'{"data":[]}', 0))
            second = asyncio.ensure_future(layer.send(Request(b'{"data":[]}', 0)))
            await asyncio.sleep(0.2)
            assert not second.done() and len(server.received) == 1  # held by the pause
            second.cancel()
    assert layer.limit.paused_until >= before + 30


async def test_the_rate_cap_layer_takes_every_attempts_records() -> None:
    async with serving(ok) as server:
        settings = Settings(endpoint=server.url, max_records_per_second=1000.0)
        caps = rate_caps(settings)
        assert caps is not None and caps.records is not None
        async with open_client(settings, Secret(KEY), target_for("interactions")) as client:
            layer = RateCap(ConcurrencyLimit(client, 2), caps)
            for _ in range(3):
                await layer.send(Request(b'{"data":[]}', 100))  # 300 of a 100-token bucket
    assert len(server.received) == 3
    assert caps.waited > 0 and caps.records.tokens < 100
    assert rate_caps(Settings()) is None
    shared = rate_caps(Settings(max_requests_per_second=10.0), processes=4)
    assert shared is not None and shared.records is None
    assert shared.requests is not None and shared.requests.rate == 2.5  # a total for 4


# -- --wait-tasks: a task-status poll is a request like any other to the layers ------------


def catalog(tmp_path: Path, n: int) -> Path:
    return write_lines(tmp_path / "p.jsonl", [line(product(f"p{i}")) for i in range(n)])


async def test_task_polls_wait_out_a_retry_after_at_the_server(
    tmp_path: Path, server: RunningServer
) -> None:
    server.set_faults(Faults(task_throttle_first=2, retry_after=0.5))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(catalog(tmp_path, 3))], kind="products",
        wait_tasks=True, concurrency=1,
    )  # fmt: skip
    polls = [a.at for a in server.arrivals() if "/_status/" in a.path]
    assert len(polls) == 3  # 429, 429, the status
    # the backoff is 0.01-0.05 s (run_engine): only the Retry-After keeps them this far apart
    assert polls[1] - polls[0] >= 0.5 and polls[2] - polls[1] >= 0.5
    assert (await server.stats())["requests"]["by_status"] == {"200": 2, "429": 2}
    assert report["exit_code"] == 0 and report["records_accepted"] == 3
    assert report["batches_sent"] == 1  # a poll is a request, not a batch sent


async def test_the_request_rate_cap_counts_task_polls(
    tmp_path: Path, server: RunningServer
) -> None:
    rate = 20.0  # a bucket of 2 requests
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(catalog(tmp_path, 10))], kind="products",
        wait_tasks=True, concurrency=1, batch_size=1, max_requests_per_second=rate,
    )  # fmt: skip
    arrivals = server.arrivals()
    assert [a.method for a in arrivals] == ["POST", "GET"] * 10
    # k + 1 requests taken by the k-th: at most the bucket (2) and `rate` a second since the
    # first (less one token for the first request's own way to the server)
    late = [k for k, a in enumerate(arrivals) if a.at - arrivals[0].at < (k - 2) / rate]
    assert late == []  # polls bypassing the cap: the 20 arrive in ~0.45 s, not >= 0.9 s
    assert report["exit_code"] == 0 and report["batches_sent"] == 10
