"""Prometheus metrics over real HTTP on 127.0.0.1 and as a real textfile, parsed back."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from backfill.errors import UsageError
from backfill.metrics import Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def a_run(metrics: Metrics) -> None:
    """What an engine would report over a small run."""
    metrics.records_read.inc(120)
    metrics.records_valid.inc(118)
    metrics.records_invalid.inc(2)
    metrics.records_accepted.inc(100)
    metrics.records_rejected.inc(18)
    metrics.attempt(200, 0.004, 1000)
    metrics.attempt(200, 0.3, 1000)
    metrics.attempt(429, 0.001, 500)
    metrics.attempt("timeout", None, 500)
    metrics.retries.inc(2)
    metrics.follow(limit=lambda: 7, in_flight=lambda: 3, rate_wait=lambda: 1.5)


EXPECTED = {
    ("backfill_records_read_total", ()): 120.0,
    ("backfill_records_valid_total", ()): 118.0,
    ("backfill_records_invalid_total", ()): 2.0,
    ("backfill_records_accepted_total", ()): 100.0,
    ("backfill_records_rejected_total", ()): 18.0,
    ("backfill_requests_total", (("status", "200"),)): 2.0,
    ("backfill_requests_total", (("status", "429"),)): 1.0,
    ("backfill_requests_total", (("status", "timeout"),)): 1.0,
    ("backfill_retries_total", ()): 2.0,
    ("backfill_request_bytes_total", ()): 3000.0,
    ("backfill_concurrency_limit", ()): 7.0,
    ("backfill_requests_in_flight", ()): 3.0,
    ("backfill_rate_limit_wait_seconds_total", ()): 1.5,
    ("backfill_request_duration_seconds_count", ()): 3.0,
    ("backfill_request_duration_seconds_bucket", (("le", "0.005"),)): 2.0,
    ("backfill_request_duration_seconds_bucket", (("le", "0.25"),)): 2.0,
    ("backfill_request_duration_seconds_bucket", (("le", "0.5"),)): 3.0,
    ("backfill_request_duration_seconds_bucket", (("le", "60.0"),)): 3.0,
}


def assert_run(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
    assert {key: found.get(key) for key in EXPECTED} == EXPECTED
    rtt_sum = found[("backfill_request_duration_seconds_sum", ())]
    assert rtt_sum == pytest.approx(0.305)


async def test_the_endpoint_serves_exact_counts_while_running() -> None:
    metrics = Metrics()
    endpoint = await metrics.serve(0)
    try:
        a_run(metrics)
        async with aiohttp.ClientSession() as http, http.get(endpoint.url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            assert_run(samples(await response.text()))
        metrics.records_read.inc(5)
        async with aiohttp.ClientSession() as http, http.get(endpoint.url) as response:
            assert samples(await response.text())[("backfill_records_read_total", ())] == 125.0
        assert metrics.value("backfill_records_read_total") == 125.0
    finally:
        await endpoint.close()
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(endpoint.url)


async def test_a_taken_port_is_a_usage_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await Metrics().serve(port)


def test_two_runs_in_one_process_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.retries.inc(3)
    assert (first.value("backfill_retries_total"), second.value("backfill_retries_total")) == (
        3.0,
        0.0,
    )


def test_the_textfile_is_replaced_whole_and_parses(tmp_path: Path) -> None:
    path = tmp_path / "backfill.prom"
    path.write_text("stale contents of a previous run\n")
    metrics = Metrics()
    a_run(metrics)
    metrics.write_textfile(str(path))
    assert_run(samples(path.read_text()))
    assert os.listdir(tmp_path) == ["backfill.prom"]  # no temporary file left behind


def test_an_unwritable_textfile_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "backfill.prom"
    with pytest.raises(UsageError, match=f"cannot write the metrics file {path}"):
        Metrics().write_textfile(str(path))
    assert not path.parent.exists()


class CountsCollections(Collector):
    """A real collector in the registry that counts how often the registry is collected."""

    def __init__(self) -> None:
        self.collections = 0

    def collect(self) -> Iterator[Metric]:
        self.collections += 1
        yield GaugeMetricFamily("test_collections", "registry collections", value=0)


def test_followed_counts_are_exact_and_the_registry_is_collected_once_a_scrape() -> None:
    metrics = Metrics()
    probe = CountsCollections()
    metrics.registry.register(probe)
    totals = {"records_read": 120.0, "records_accepted": 100.0, "retries": 2.0}
    metrics.follow(counts=lambda: totals)
    metrics.records_read.inc(150)  # ahead of the count: a counter never goes down
    metrics.sync()
    assert probe.collections == 0  # each counter is read alone, not through the registry
    found = samples(metrics.exposition().decode())
    assert probe.collections == 1
    assert found[("backfill_records_read_total", ())] == 150.0
    assert found[("backfill_records_accepted_total", ())] == 100.0
    assert found[("backfill_retries_total", ())] == 2.0
    totals.update(records_read=200.0, retries=5.0)
    found = samples(metrics.exposition().decode())
    assert (found[("backfill_records_read_total", ())], found[("backfill_retries_total", ())]) == (
        200.0,
        5.0,
    )
    assert probe.collections == 2
