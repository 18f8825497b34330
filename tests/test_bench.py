"""`backfill bench` against the embedded server: it sweeps, prints, recommends, stores nothing.

The command runs on its own event loop in a worker thread (as it would in its own process)
while the server keeps serving on the test's loop. No timing is asserted: only that every
setting was measured, a setting is recommended, and the server stored nothing (dry_run=1).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from backfill.bench import Point, main, recommend
from backfill.server import RunningServer
from tests.helpers import interaction, line, write_lines

KEY = "test-secret-key"  # the conftest server's secret key


def _input(tmp_path: Path, valid: int = 300, invalid: int = 2) -> Path:
    lines = [line(interaction(i)) for i in range(valid)] + [b'{"type": "nope"}'] * invalid
    return write_lines(tmp_path / "events.jsonl.gz", lines, gz=True)


def _key_file(tmp_path: Path, key: str = KEY) -> str:
    path = tmp_path / "key"
    path.write_text(key + "\n")
    return str(path)


async def test_bench_sweeps_recommends_and_stores_nothing(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, png = _input(tmp_path), tmp_path / "curve.png"
    argv = [
        "--endpoint", server.url, "--api-key-file", _key_file(tmp_path),
        "--concurrency", "1,2", "--batch-size", "50,100", "--seconds", "0.2",
        "--sample", "1000", "--png", str(png), str(data),
    ]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "local side: 300 valid records sampled (2 invalid lines skipped)" in out
    rows = re.findall(r"^\s+(\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s", out, re.MULTILINE)
    assert sorted((int(c), int(b)) for c, b, _, _ in rows) == [(1, 50), (1, 100), (2, 50), (2, 100)]
    assert all(int(requests.replace(",", "")) > 0 for _, _, requests, _ in rows)
    assert re.search(
        r"^recommended: --concurrency [12] --batch-size (50|100) \(", out, re.MULTILINE
    )
    assert png.read_bytes().startswith(b"\x89PNG")
    stats = await server.stats()
    assert stats["requests"]["by_status"].keys() == {"200"}
    assert stats["records_received"] == 0
    assert server.records("interactions") == []


def test_bench_dry_run_measures_the_local_side_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--dry-run", "--sample", "1000", str(_input(tmp_path, valid=120, invalid=3))])
    out = capsys.readouterr().out
    assert code == 0
    assert "local side: 120 valid records sampled (3 invalid lines skipped)" in out
    for stage in ("read (gunzip, split, map)", "validate", "encode bodies", "local side in all"):
        assert stage in out
    assert "recommended" not in out


async def test_bench_stops_on_a_refused_key(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--endpoint", server.url, "--api-key-file", _key_file(tmp_path, "wrong"),
        "--concurrency", "1", "--batch-size", "10", "--seconds", "0.1", str(_input(tmp_path)),
    ]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    assert code == 3
    assert "the API key was refused (HTTP 401)" in capsys.readouterr().err


def point(c: int, b: int, records: int, errors: int = 0) -> Point:
    return Point(c, b, requests=10, records=records, seconds=1.0, latencies=[0.1], errors=errors)


def test_recommendation_is_the_best_setting() -> None:
    points = [
        point(1, 1000, 10_000),
        point(4, 1000, 91_000),  # 9% slower is not a tie: the best is recommended
        point(16, 1000, 100_000),
        point(64, 1000, 120_000, errors=3),  # fastest, but throttled: never recommended
        point(4, 10_000, 92_000),
    ]
    best = recommend(points)
    assert best is not None and (best.concurrency, best.batch_size) == (16, 1000)
    assert recommend([point(1, 10, 0, errors=5)]) is None


def test_a_near_tie_goes_to_the_gentler_setting() -> None:
    points = [
        point(16, 10_000, 100_000),
        point(4, 10_000, 96_000),  # within 5%: fewer requests in flight wins
        point(4, 1000, 95_500),  # and between those, the smaller body
        point(1, 1000, 94_000),  # 6% slower: not a tie
    ]
    best = recommend(points)
    assert best is not None and (best.concurrency, best.batch_size) == (4, 1000)
