"""Interrupt real `backfill run` subprocesses (SIGKILL, SIGTERM, SIGINT) and resume them.

The invariants, checked against what the embedded server actually stored:
  * every valid record arrived at least once;
  * a record that arrived twice lies inside a batch the final report lists as ambiguous;
  * the report's counts match the server's.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backfill.server import Faults, RunningServer
from tests.helpers import interaction, line, write_lines

FILES, PER_FILE = 4, 2_500


def make_inputs(tmp_path: Path) -> tuple[list[str], dict[bytes, tuple[str, int]]]:
    origin: dict[bytes, tuple[str, int]] = {}
    paths = []
    for f in range(FILES):
        rows = [line(interaction(f * PER_FILE + i)) for i in range(PER_FILE)]
        path = write_lines(
            tmp_path / f"day-{f}.jsonl{'.gz' if f % 2 else ''}", rows, gz=bool(f % 2)
        )
        paths.append(str(path))
        origin.update({r: (str(path), n + 1) for n, r in enumerate(rows)})
    return paths, origin


class Runner:
    def __init__(self, tmp_path: Path, server: RunningServer, inputs: list[str], *extra: str):
        self.report = tmp_path / "report.json"
        self.cmd = [
            sys.executable, "-m", "backfill", "run", *inputs,
            "--endpoint", server.url, "--state-dir", str(tmp_path / "state"),
            "--batch-size", "250", "--concurrency", "4", "--progress", "log",
            "--progress-interval", "0.2", "--backoff-initial", "0.01",
            "--report", str(self.report), *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "MISO_API_KEY": server.secret_key}
        self.server = server

    async def leg(self, sig: int | None, after_requests: int) -> tuple[int, str]:
        """Runs one leg; sends `sig` once the server has *received* `after_requests` requests
        of this leg (so with injected latency, the last of them is still in flight)."""
        proc = await asyncio.create_subprocess_exec(
            *self.cmd, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        start = (await self.server.stats())["requests"]["received"]
        if sig is not None:
            while proc.returncode is None:
                if (await self.server.stats())["requests"]["received"] - start >= after_requests:
                    proc.send_signal(sig)
                    break
                await asyncio.sleep(0.005)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, (out + err).decode()

    def final_report(self) -> dict[str, Any]:
        return json.loads(self.report.read_text())


def check_invariants(
    server: RunningServer, origin: dict[bytes, tuple[str, int]], report: dict[str, Any]
) -> None:
    stored = Counter(server.records("interactions"))
    assert set(stored) == set(origin), "a record was lost or an unknown one arrived"
    ambiguous = [
        (a["source"], a["first_line"], a["last_line"]) for a in report["ambiguous_batches"]
    ]
    for record, count in stored.items():
        if count > 1:
            src, n = origin[record]
            assert any(s == src and lo <= n <= hi for s, lo, hi in ambiguous), (src, n, count)
    assert report["records_accepted"] == len(origin)
    assert sum(stored.values()) - len(stored) <= report["possibly_duplicated"]


def _expected(sig: int) -> set[int]:
    # the leg may also finish before the signal lands
    return {0, -signal.SIGKILL} if sig == signal.SIGKILL else {0, 128 + sig}


async def test_kills_at_the_first_middle_and_last_batch(
    tmp_path: Path, server: RunningServer
) -> None:
    inputs, origin = make_inputs(tmp_path)
    server.set_faults(Faults(latency="0.03"))
    runner = Runner(tmp_path, server, inputs)
    total_batches = FILES * PER_FILE // 250
    plan = [
        (signal.SIGKILL, 1),  # during the very first batch
        (signal.SIGTERM, 8),
        (signal.SIGINT, 6),
        (signal.SIGKILL, total_batches),  # near or at the very last batch
    ]
    seen = []
    for sig, after in plan:
        code, output = await runner.leg(sig, after)
        assert code in _expected(sig), output
        seen.append(code)
        if code in (130, 143):
            assert "to resume: backfill run" in output
            assert json.loads(runner.report.read_text())["status"] == "interrupted"
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert -signal.SIGKILL in seen and (143 in seen or 130 in seen)
    report = runner.final_report()
    check_invariants(server, origin, report)
    assert report["legs"] == len(plan) + 1


async def test_lost_answers_are_reported_as_possible_duplicates(
    tmp_path: Path, server: RunningServer
) -> None:
    """The server stores a batch but the answer is lost: the retry may duplicate it, and the
    report must say so (the range is listed as ambiguous, "retried")."""
    inputs, origin = make_inputs(tmp_path)
    runner = Runner(tmp_path, server, inputs)
    server.set_faults(Faults(lost_answer_rate=0.2, seed=4))
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    report = runner.final_report()
    check_invariants(server, origin, report)
    stored = server.records("interactions")
    assert len(stored) > len(origin), "the fault should have caused duplicates"
    assert {a["resolution"] for a in report["ambiguous_batches"]} == {"retried"}


async def test_second_ctrl_c_cancels_requests_in_flight(
    tmp_path: Path, server: RunningServer
) -> None:
    inputs, origin = make_inputs(tmp_path)
    runner = Runner(tmp_path, server, inputs, "--drain-timeout", "60")
    server.set_faults(Faults(stall_rate=1.0, stall_seconds=60))
    proc = await asyncio.create_subprocess_exec(
        *runner.cmd, env=runner.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    while (await server.stats())["requests"]["received"] < 4:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.5)
    assert proc.returncode is None, "the first Ctrl-C waits for requests in flight"
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)  # far less than the 60 s stall
    assert proc.returncode == 130, (out + err).decode()
    assert b"second signal" in err
    server.set_faults(Faults())
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    report = runner.final_report()
    check_invariants(server, origin, report)
    assert sum(a["records"] for a in report["ambiguous_batches"]) >= 4 * 250


async def test_drain_timeout_bounds_the_wait(tmp_path: Path, server: RunningServer) -> None:
    inputs, origin = make_inputs(tmp_path)
    runner = Runner(tmp_path, server, inputs, "--drain-timeout", "1")
    server.set_faults(Faults(stall_rate=1.0, stall_seconds=60))
    code, output = await runner.leg(signal.SIGTERM, 2)
    assert code == 143, output
    assert "to resume: backfill run" in output
    server.set_faults(Faults())
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    check_invariants(server, origin, runner.final_report())


async def test_ambiguous_skip_never_resends(tmp_path: Path, server: RunningServer) -> None:
    inputs, origin = make_inputs(tmp_path)
    runner = Runner(tmp_path, server, inputs, "--ambiguous", "skip")
    server.set_faults(Faults(latency="0.05"))
    code, _ = await runner.leg(signal.SIGKILL, 5)
    assert code == -signal.SIGKILL
    server.set_faults(Faults())
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    report = runner.final_report()
    stored = Counter(server.records("interactions"))
    assert max(stored.values()) == 1
    skipped = sum(a["records"] for a in report["ambiguous_batches"])
    assert report["records_assumed_delivered"] == skipped
    assert len(stored) >= len(origin) - skipped
    assert report["records_accepted"] + skipped == len(origin)


async def test_changed_input_is_refused_and_new_files_are_picked_up(
    tmp_path: Path, server: RunningServer
) -> None:
    inputs, origin = make_inputs(tmp_path)
    runner = Runner(tmp_path, server, [str(tmp_path / "day-*")])
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    # tomorrow's log arrives: only it is read
    extra = [line(interaction(10**6 + i)) for i in range(100)]
    write_lines(tmp_path / "day-9.jsonl", extra)
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert "4 of 5 files done" in output
    assert Counter(server.records("interactions")) == Counter([*origin, *extra])
    # a file that changed under a checkpoint is refused, naming it
    with open(inputs[0], "ab") as fh:
        fh.write(line(interaction(2 * 10**6)) + b"\n")
    code, output = await runner.leg(None, 0)
    assert code == 2 and inputs[0] in output and "--force" in output


async def test_status_tells_what_the_checkpoint_holds(
    tmp_path: Path, server: RunningServer
) -> None:
    inputs, _ = make_inputs(tmp_path)
    runner = Runner(tmp_path, server, inputs)
    server.set_faults(Faults(latency="0.05"))
    await runner.leg(signal.SIGKILL, 6)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", "status", "--state-dir", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0
    assert "records accepted" in text and "to continue:        backfill run" in text
    assert "batches in flight at the last stop" in text


@pytest.mark.chaos
async def test_soak_fifty_random_kills(tmp_path: Path, server: RunningServer) -> None:
    """`make chaos`: 50 legs killed at random moments (mostly SIGKILL), over a flaky API."""
    inputs, origin = make_inputs(tmp_path)
    server.set_faults(Faults(latency="uniform:0.005:0.05", error_rate=0.05, seed=11))
    runner = Runner(tmp_path, server, inputs)
    runner.cmd[runner.cmd.index("--batch-size") + 1] = "20"  # 500 batches: 50 kills fit
    rng = random.Random(5)
    kills = 0
    for _ in range(50):
        sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
        # SIGKILL at any moment, start-up included; SIGTERM/SIGINT once requests flow (during
        # interpreter start-up they kill the process before any handler exists)
        after = rng.randint(0 if sig == signal.SIGKILL else 1, 8)
        code, output = await runner.leg(sig, after)
        assert code in _expected(sig), output
        kills += code != 0
    server.set_faults(Faults())
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert kills == 50
    check_invariants(server, origin, runner.final_report())
