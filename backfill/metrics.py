"""Prometheus metrics of a run: a scrape endpoint for long loads, a textfile for batch jobs.

`prometheus_client` writes the exposition format (we never do by hand). Each `Metrics` has its
own `CollectorRegistry`, not the process-global one, so two runs in one process (tests, the
benchmark harness) never collide over metric names.

The endpoint is served by aiohttp on the run's own event loop rather than by
`prometheus_client.start_http_server`: that one is a thread with a WSGI server, whereas ours
binds port 0 and reports the port it got, stops with the run (`close()`), and turns a taken
port into a message instead of a traceback from another thread. It binds 127.0.0.1 only.

`write_textfile` follows the node-exporter textfile-collector convention (a `.prom` file in
the collector's directory, written to a temporary name and renamed, so the collector never
reads half a file): the way to report on a batch job that ends before anyone scrapes it. The
Pushgateway is not used: it keeps a finished run's series forever.

Values the engine already keeps elsewhere (the concurrency limit, requests in flight, the rate
caps' wait) are read at scrape time through `follow`, so nothing has to be copied into a gauge.
The engine's record counts (progress.LegStats) are followed the same way: before each scrape
or write, every followed counter is raised to the engine's count, so the exposition at exit
equals the final report's counts of the leg and the engine's hot path never calls `inc`.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from backfill.errors import UsageError
from backfill.waiting import wait_event

LOOPBACK: Final = "127.0.0.1"
PATH: Final = "/metrics"
METRICS_INTERVAL: Final = 15.0  # seconds between writes of --metrics-textfile
# 5 ms (a loopback answer) to 60 s (past the default request timeout)
RTT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Followed(Collector):
    """A counter whose running total lives elsewhere (RateCaps.waited), read at each scrape."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.source: Callable[[], float] = lambda: 0.0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.source())


class Metrics:
    """Every metric of one run. Counters are plain prometheus_client objects: `.inc(n)`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records_read = self._counter("records_read", "Records read from the inputs")
        self.records_valid = self._counter("records_valid", "Records that passed validation")
        self.records_invalid = self._counter("records_invalid", "Records refused by validation")
        self.records_accepted = self._counter("records_accepted", "Records the API acknowledged")
        self.records_rejected = self._counter("records_rejected", "Records the API refused")
        self.requests = Counter(
            "backfill_requests",
            "Request attempts by answer: HTTP status, or timeout / connection",
            ["status"],
            registry=self.registry,
        )
        self.retries = self._counter("retries", "Attempts that were retries")
        self.bytes_sent = self._counter("request_bytes", "Request body bytes sent, all attempts")
        self.in_flight = self._gauge("requests_in_flight", "Requests sent and not yet answered")
        self.concurrency_limit = self._gauge("concurrency_limit", "Requests allowed at once")
        self.round_trip = Histogram(
            "backfill_request_duration_seconds",
            "Round-trip time of each attempt",
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        self._rate_wait = _Followed(
            "backfill_rate_limit_wait_seconds", "Seconds the rate caps held requests back"
        )
        self.registry.register(self._rate_wait)
        self._counts: Callable[[], Mapping[str, float]] | None = None

    def _counter(self, name: str, documentation: str) -> Counter:
        return Counter(f"backfill_{name}", documentation, registry=self.registry)

    def _gauge(self, name: str, documentation: str) -> Gauge:
        return Gauge(f"backfill_{name}", documentation, registry=self.registry)

    def follow(
        self,
        *,
        limit: Callable[[], float] | None = None,
        in_flight: Callable[[], float] | None = None,
        rate_wait: Callable[[], float] | None = None,
        counts: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        """Reads these at every scrape, e.g. `follow(limit=lambda: concurrency.limit)`;
        `counts` maps counter attributes ("records_read", "retries") to running totals."""
        if counts is not None:
            self._counts = counts
        if limit is not None:
            self.concurrency_limit.set_function(limit)
        if in_flight is not None:
            self.in_flight.set_function(in_flight)
        if rate_wait is not None:
            self._rate_wait.source = rate_wait

    def lag(
        self,
        *,
        age: Callable[[], float],
        waiting: Callable[[], float],
        unread: Callable[[], float],
    ) -> None:
        """--follow: how far behind the load is, read at every scrape like `follow`
        (the age is NaN until a record with a timestamp is acknowledged)."""
        self._gauge(
            "follow_lag_seconds",
            "Age of the newest record acknowledged, by its timestamp (--follow)",
        ).set_function(age)
        self._gauge(
            "follow_records_waiting", "Records read and not yet acknowledged (--follow)"
        ).set_function(waiting)
        self._gauge(
            "follow_unread_bytes", "Bytes appended to the followed files, not yet read (--follow)"
        ).set_function(unread)

    def attempt(self, status: int | str, seconds: float | None, body_bytes: int) -> None:
        """One request attempt: its answer, its round trip (None if unanswered), its body."""
        self.requests.labels(status=str(status)).inc()
        self.bytes_sent.inc(body_bytes)
        if seconds is not None:
            self.round_trip.observe(seconds)

    def sync(self) -> None:
        """Raises each followed counter to its running total (counters never go down).
        Each counter is read from its own samples: the registry is collected once, by the
        exposition, not once per counter."""
        if self._counts is None:
            return
        for name, total in self._counts().items():
            counter: Counter = getattr(self, name)
            behind = total - _total(counter)
            if behind > 0:
                counter.inc(behind)

    def exposition(self) -> bytes:
        self.sync()
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample by its exposed name (`backfill_retries_total`), for reports and tests."""
        return self.registry.get_sample_value(name, labels)

    def write_textfile(self, path: str) -> None:
        """Atomic (temporary name in the same directory, then rename). Blocking: small file."""
        self.sync()
        try:
            write_to_textfile(path, self.registry)
        except OSError as exc:
            raise UsageError(f"cannot write the metrics file {path}: {exc.strerror}") from None

    async def serve(self, port: int) -> MetricsEndpoint:
        """Serves GET /metrics on 127.0.0.1:port (0 picks a free port) until `close()`."""
        app = web.Application()
        app.router.add_get(PATH, self._scrape)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, LOOPBACK, port).start()
        except OSError as exc:
            await runner.cleanup()
            reason = "the port is taken" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise UsageError(f"cannot serve metrics on {LOOPBACK}:{port}: {reason}") from None
        return MetricsEndpoint(runner, runner.addresses[0][1])

    async def _scrape(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response


class MetricsEndpoint:
    """A running /metrics server; `close()` stops it (the run's shutdown does)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}{PATH}"

    async def close(self) -> None:
        await self._runner.cleanup()


def _total(counter: Counter) -> float:
    """An unlabelled counter's value, from collecting that counter alone."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                return sample.value
    return 0.0


async def export_textfile(
    metrics: Metrics, path: str, interval: float, done: asyncio.Event, warn: Callable[[str], None]
) -> None:
    """Writes the textfile every `interval` seconds until `done`. The caller writes it first
    (an unwritable path stops the run before it starts) and last (with the final counts);
    a write failing mid-run is warned about once, and the run goes on."""
    while not await wait_event(done, interval):
        try:
            metrics.write_textfile(path)
        except UsageError as exc:
            warn(f"{exc}; the metrics file is no longer updated")
            return
