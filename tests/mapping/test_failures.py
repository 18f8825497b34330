"""Mapped inputs never stop a load (issue 12 item 6): a line that cannot be decoded, is nested
too deeply, holds a number out of range, or makes a mapping rule fail is a dead letter with
its reason, as in the native path; the rest of the file arrives, and a resume goes on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from backfill.server import RunningServer, start_server
from tests.helpers import dead_letters, run_engine
from tests.server_fixtures import faults, server_config

JSON_TABLE = """
[mapping]
format = "jsonl"
[mapping.fields]
type = { const = "product_detail_page_view" }
user_id = "user"
timestamp = { from = "t", convert = "datetime" }
"context.custom_context.n" = { from = "n", convert = "integer" }
[mapping.leftovers]
"""
CSV_TABLE = """
[mapping]
format = "csv"
[mapping.fields]
type = { const = "product_detail_page_view" }
user_id = "user"
timestamp = { from = "t", convert = "datetime" }
"context.custom_context.n" = { from = "n", convert = "integer" }
"""
DEEP = b"[" * 10_000 + b"]" * 10_000
ZEROS = "0" * 5000 + "7"  # a whole number whose text is longer than Python's int limit

JSON_LINES = [
    b'{"user":"u1","n":1}',
    b'{"user":"u\xff","n":2}',
    b'{"user":"u3","deep":' + DEEP + b"}",
    b'{"user":"u4","n":1e400}',
    b'{"user":"u5","n":' + b"1" * 5001 + b"}",
    b'[{"user":"u6"}]',
    b'{"user":"u7","n":7}',
    b'{"user":"u8","t":"0001-01-01T00:00:00+01:00"}',
    b'{"user":"u9","n":"' + ZEROS.encode() + b'"}',
    b'{"user":"u10","t":"Tue, 01 Oct 99999999999999999999999 10:00:00 GMT"}',
    b'{"user":"u11","n":11}',
]
JSON_REASONS = {
    2: "invalid UTF-8 at byte 10: invalid start byte",
    3: "malformed JSON: nested too deeply",
    4: "malformed JSON: Number out of range - at `$[...]`",
    5: "malformed JSON: Integer value out of range - at `$[...]`",
    6: "expected a JSON object, got an array",
    8: 't: "0001-01-01T00:00:00+01:00" is out of range for a date-time',
    9: 'n: cannot parse "' + "0" * 77 + '..." as a number (more than 4300 digits)',
    10: 't: cannot parse "Tue, 01 Oct 99999999999999999999999 10:00:00 GMT" as a date-time '
    "(expected ISO 8601 such as 2019-10-01 00:00:00 or 2019-10-01T00:00:00Z)",
}
CSV_LINES = [
    b"user,t,n",
    b"u1,,1",
    b"u\xff,,2",
    b"u3,0001-01-01T00:00:00+01:00,3",
    b"u4,," + ZEROS.encode(),
    b"u5,,1e400",
    b"u6,," + b"1" * 5001,
    b"u7,,7",
]
CSV_REASONS = {
    3: "invalid UTF-8 at byte 1: invalid start byte",
    4: 't: "0001-01-01T00:00:00+01:00" is out of range for a date-time',
    5: 'n: cannot parse "' + "0" * 77 + '..." as a number (more than 4300 digits)',
    6: 'n: cannot parse "1e400" as a number',
    7: 'n: cannot parse "' + "1" * 77 + '..." as a number',
}


def mapping(table: str) -> dict[str, Any]:
    return {"mapping": tomllib.loads(table)["mapping"], "allow_missing_timestamp": True}


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


async def load(
    tmp_path: Path, server: RunningServer, path: Path, table: str
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """(report, records stored, dead letters by line)."""
    report = await run_engine(
        tmp_path,
        server.url,
        server.secret_key,
        [str(path)],
        max_invalid_ratio=1.0,
        **mapping(table),
    )
    stored = [json.loads(r) for r in server.records("interactions")]
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert all(e["source"] == str(path) and e["stage"] == "client" for e in entries)
    return report, stored, {e["line"]: e for e in entries}


async def test_json_lines_that_cannot_be_mapped_are_dead_letters(
    tmp_path: Path, server: RunningServer
) -> None:
    path = write(tmp_path / "events.jsonl", JSON_LINES)
    report, stored, by_line = await load(tmp_path, server, path, JSON_TABLE)
    assert stored == [
        {
            "type": "product_detail_page_view",
            "user_id": f"u{n}",
            "context": {"custom_context": {"n": n}},
        }
        for n in (1, 7, 11)
    ]
    assert {line: e["reason"] for line, e in by_line.items()} == JSON_REASONS
    assert by_line[2]["record"] == '{"user":"u\\xff","n":2}'
    assert by_line[3]["record"].startswith('{"user":"u3","deep":[[[')
    assert report["exit_code"] == 0
    assert (report["records_read"], report["records_accepted"]) == (11, 3)
    assert report["records_invalid"] == 8


async def test_csv_rows_that_cannot_be_mapped_are_dead_letters(
    tmp_path: Path, server: RunningServer
) -> None:
    path = write(tmp_path / "events.csv", CSV_LINES)
    report, stored, by_line = await load(tmp_path, server, path, CSV_TABLE)
    assert stored == [
        {
            "type": "product_detail_page_view",
            "user_id": f"u{n}",
            "context": {"custom_context": {"n": n}},
        }
        for n in (1, 7)
    ]
    assert {line: e["reason"] for line, e in by_line.items()} == CSV_REASONS
    assert by_line[3]["record"] == "u\\xff,,2"
    assert report["exit_code"] == 0 and report["records_invalid"] == 5


async def test_every_depth_of_nesting_is_mapped_or_dead_lettered(
    tmp_path: Path, server: RunningServer
) -> None:
    """Around the interpreter's recursion limit an object decodes, then the recursive walk
    that copies it into custom_context runs out of stack (a rule failing on one record):
    each depth is stored or dead-lettered, and the load goes on to the end."""
    depths = range(900, 1101)
    path = write(
        tmp_path / "deep.jsonl",
        [b'{"user":"u%d","x":' % d + b'{"b":' * d + b"1" + b"}" * d + b"}" for d in depths],
    )
    report, stored, by_line = await load(tmp_path, server, path, JSON_TABLE)
    users = {r["user_id"] for r in stored}
    reasons = {e["reason"] for e in by_line.values()}
    assert reasons == {
        "malformed JSON: nested too deeply",
        "cannot map the record: nested too deeply",
    }
    assert len(users) + len(by_line) == len(depths) == report["records_read"]
    assert users.isdisjoint(f"u{depths[line - 1]}" for line in by_line)
    assert report["exit_code"] == 0 and report["records_accepted"] == len(users) > 0


async def leg(server: RunningServer, cmd: list[str], stop_after: int | None) -> int:
    """One `backfill run` process; SIGTERM once the server has received `stop_after`
    requests (the last of them still in flight: the server answers slowly)."""
    env = {**os.environ, "MISO_API_KEY": server.secret_key}
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    while stop_after is not None and proc.returncode is None:
        if (await server.stats())["requests"]["received"] >= stop_after:
            proc.send_signal(signal.SIGTERM)
            break
        await asyncio.sleep(0.005)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode or 0


async def test_a_resume_goes_past_the_lines_that_cannot_be_mapped(tmp_path: Path) -> None:
    """The first leg is stopped while its first batch is in flight; the second goes on from
    there, past every line that cannot be mapped, and sends nothing twice."""
    config = tmp_path / "mapping.toml"
    config.write_text("allow_missing_timestamp = true\nmax_invalid_ratio = 1.0\n" + JSON_TABLE)
    path = write(tmp_path / "events.jsonl", JSON_LINES)
    slow = server_config(faults=faults(latency="0.3"))
    server = await start_server(slow)
    try:
        cmd = [
            sys.executable, "-m", "backfill", "run", str(path), "--config", str(config),
            "--endpoint", server.url, "--state-dir", str(tmp_path / "state"),
            "--batch-size", "2", "--concurrency", "1", "--progress", "off",
        ]  # fmt: skip
        assert await leg(server, cmd, stop_after=1) == 143
        first = [json.loads(r)["user_id"] for r in server.records("interactions")]
        assert first in (["u1"], ["u1", "u7"])
        assert await leg(server, cmd, stop_after=None) == 0
        stored = [json.loads(r)["user_id"] for r in server.records("interactions")]
    finally:
        await server.close()
    assert stored == ["u1", "u7", "u11"]
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert sorted(e["line"] for e in entries) == sorted(JSON_REASONS)


def test_preview_shows_them_as_dead_letters(tmp_path: Path) -> None:
    config = tmp_path / "mapping.toml"
    config.write_text("allow_missing_timestamp = true\n" + JSON_TABLE)
    path = write(tmp_path / "events.jsonl", JSON_LINES)
    command = [sys.executable, "-m", "backfill", "preview", "--config", str(config), str(path)]
    done = subprocess.run(
        [*command, "-n", "11", "--width", "200"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert out.count(": dead letter ") == 8 and out.count(": valid ") == 3
    for line, why in JSON_REASONS.items():
        assert f" line {line}: dead letter " in out
        assert why[:60] in out
    assert out.splitlines()[-1] == "11 records: 3 valid, 8 dead letter, 0 left out"
