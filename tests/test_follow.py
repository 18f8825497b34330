"""`backfill run --follow`: real subprocesses (the engine, a writer) and the embedded server.

The invariants, checked against what the server stored: every record written arrives
(exactly once without a kill; after a kill -9, a record twice only within what was in
flight, counted in `possibly_duplicated`); a half-written line is never dead-lettered; a file
replaced or truncated under the follower is reported; SIGINT/SIGTERM end it with 130/143 and
the report. Waits are for an outcome at the server (with a generous timeout), never timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backfill.cli import main
from backfill.server import Faults, RunningServer
from tests.helpers import dead_letters, interaction, line, numbers, write_lines

FAST = (
    "--linger", "0.2", "--poll-interval", "0.05", "--idle-timeout", "30",
    "--progress", "log", "--progress-interval", "0.3", "--backoff-initial", "0.01",
)  # fmt: skip


class Follow:
    """One `backfill run --follow` command, started as often as a test needs (legs)."""

    def __init__(self, tmp: Path, server: RunningServer, inputs: list[str], *extra: str):
        self.tmp, self.server = tmp, server
        self.report = tmp / "report.json"
        self.state = tmp / "state"
        self.cmd = [
            sys.executable, "-m", "backfill", "run", *inputs, "--follow",
            "--endpoint", server.url, "--state-dir", str(self.state),
            "--batch-size", "50", "--report", str(self.report), *FAST, *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "MISO_API_KEY": server.secret_key}
        self.proc: asyncio.subprocess.Process | None = None
        self.legs = 0

    async def start(self) -> None:
        self.legs += 1
        out = open(self.tmp / f"leg-{self.legs}.out", "wb")  # noqa: SIM115 (the child's)
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
        out.close()

    async def stop(self, sig: int) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 60)
        return code, self.output()

    def output(self) -> str:
        return (self.tmp / f"leg-{self.legs}.out").read_text()

    def final_report(self) -> dict[str, Any]:
        return dict(json.loads(self.report.read_text()))

    def stored(self) -> list[int]:
        return numbers(self.server.records("interactions"))

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Waits for an outcome; a follower that died meanwhile fails the test at once."""
        async with asyncio.timeout(timeout):
            while not check():
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"the follower ended ({what}): {self.output()}")
                await asyncio.sleep(0.02)

    async def has(self, expected: set[int]) -> None:
        await self.until(lambda: expected <= set(self.stored()), f"waiting for {len(expected)}")


def _checkpoint(state: Path, query: str) -> Any:
    """One value from the checkpoint as it is now (None while it cannot be read yet)."""
    try:
        db = sqlite3.connect(f"file:{state / 'checkpoint.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute(query).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return None


async def write(tmp: Path, steps: list[dict[str, Any]]) -> None:
    """Runs the writer process (tests/follow_writer.py) to its end."""
    plan = tmp / f"plan-{random.randrange(1 << 30)}.json"
    plan.write_text(json.dumps(steps))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.follow_writer", str(plan), cwd=Path(__file__).parent.parent
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0


def history(tmp: Path, n: int) -> Path:
    logs = tmp / "logs"
    logs.mkdir()
    write_lines(logs / "2026-06-01.jsonl", [line(interaction(i)) for i in range(n)])
    return logs


def half_written(tmp: Path, n: int, cut: int) -> tuple[Path, Path, bytes]:
    """logs/app.jsonl: records 0 .. n-1, then the first `cut` bytes of record n (returned)."""
    logs = tmp / "logs"
    logs.mkdir()
    path = logs / "app.jsonl"
    last = line(interaction(n))
    path.write_bytes(b"".join(line(interaction(i)) + b"\n" for i in range(n)) + last[:cut])
    return logs, path, last


def bursts(logs: Path, first: int) -> tuple[list[dict[str, Any]], set[int]]:
    """Bursts and a trickle, to the growing history file and to two new files, split lines."""
    day1, day2, day3 = (str(logs / f"2026-06-0{d}.jsonl") for d in (1, 2, 3))
    steps = [
        {"path": day1, "first": first, "count": 120, "split": True, "pause": 0.05},
        {"path": day2, "first": first + 120, "count": 7, "split": True, "pause": 0.1},
        *(
            {"path": day2, "first": first + 127 + i, "count": 1, "split": i % 2 == 0, "pause": 0.02}
            for i in range(20)
        ),
        {"path": day3, "first": first + 147, "count": 300, "split": True, "pause": 0.05},
        {"path": day2, "first": first + 447, "count": 3, "split": False, "pause": 0.0},
    ]
    return steps, set(range(first, first + 450))


async def test_every_record_arrives_exactly_once_and_sigint_reports(
    tmp_path: Path, server: RunningServer
) -> None:
    logs = history(tmp_path, 200)
    run = Follow(tmp_path, server, [str(logs)])
    await run.start()
    await run.has(set(range(200)))
    steps, written = bursts(logs, 1000)
    await write(tmp_path, steps)
    await run.has(set(range(200)) | written)
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == sorted([*range(200), *written])  # each exactly once
    report = run.final_report()
    assert report["status"] == "interrupted" and report["exit_code"] == 130
    assert report["records_accepted"] == 650 and report["possibly_duplicated"] == 0
    assert report["files"] == 3 and "to resume: backfill run" in output
    assert dead_letters(run.state / "dead-letter.jsonl") == []
    assert "| newest record sent " in output  # the progress line shows the lag


async def test_sigterm_ends_it_with_143_the_report_and_the_lag_metrics(
    tmp_path: Path, server: RunningServer
) -> None:
    logs = history(tmp_path, 30)
    prom = tmp_path / "backfill.prom"
    run = Follow(tmp_path, server, [str(logs / "*.jsonl")], "--metrics-textfile", str(prom))
    started = time.time()
    await run.start()
    await run.has(set(range(30)))
    code, output = await run.stop(signal.SIGTERM)
    assert code == 143, output
    assert run.final_report()["status"] == "interrupted"
    assert "interrupted by SIGTERM" in output
    samples = dict(x.split(" ") for x in prom.read_text().splitlines() if x[0] != "#")
    assert samples["backfill_follow_records_waiting"] == "0.0"
    assert samples["backfill_follow_unread_bytes"] == "0.0"
    newest = datetime.fromisoformat(interaction(29)["timestamp"]).timestamp()
    assert float(samples["backfill_follow_lag_seconds"]) >= started - newest  # by timestamps


async def test_many_growing_files_are_read_a_few_at_a_time(
    tmp_path: Path, server: RunningServer
) -> None:
    """150 files written just now under a limit of 150 descriptors: the follower opens a
    quarter of that at once, the others wait until those are idle, and every record arrives
    (opening them all at once would run out of descriptors)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    soon = time.time() + 4  # written "in 4 s": none is idle before then
    for i in range(150):
        write_lines(logs / f"part-{i:03d}.jsonl", [line(interaction(i))])
        os.utime(logs / f"part-{i:03d}.jsonl", (soon, soon))
    run = Follow(tmp_path, server, [str(logs)], "--idle-timeout", "1")
    real = run.cmd[0]
    limit = "import resource,os,sys; resource.setrlimit(resource.RLIMIT_NOFILE, (150, 150));"
    run.cmd[:1] = [real, "-c", f"{limit} os.execv(sys.executable, sys.argv[1:])", real]
    await run.start()
    await run.has(set(range(150)))
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == list(range(150))
    assert "Too many open files" not in output


async def test_a_compressed_file_is_read_whole_once(tmp_path: Path, server: RunningServer) -> None:
    logs = history(tmp_path, 10)
    run = Follow(tmp_path, server, [str(logs)])
    await run.start()
    await run.has(set(range(10)))
    tmp = tmp_path / "day.jsonl.gz"
    write_lines(tmp, [line(interaction(i)) for i in range(100, 160)], gz=True)
    os.replace(tmp, logs / "2026-05-31.jsonl.gz")  # appears complete
    await run.has(set(range(100, 160)))
    write_lines(logs / "2026-06-02.jsonl", [line(interaction(200))])  # a later round
    await run.has({200})
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == [*range(10), *range(100, 160), 200]


async def test_kill_9_and_restart_loses_nothing(tmp_path: Path, server: RunningServer) -> None:
    """Killed while batches are in flight and the writer goes on; the same command resumes:
    the grown file is not refused as changed, and only what was in flight is sent twice."""
    logs = history(tmp_path, 100)
    server.set_faults(Faults(latency="0.05"))
    run = Follow(tmp_path, server, [str(logs)], "--batch-size", "10")
    await run.start()
    steps, written = bursts(logs, 5000)
    writer = asyncio.create_task(write(tmp_path, steps))
    await run.until(lambda: len(run.stored()) >= 150, "150 stored")
    assert run.proc is not None
    run.proc.kill()
    assert await run.proc.wait() == -signal.SIGKILL
    await writer
    await run.start()
    expected = set(range(100)) | written
    await run.has(expected)
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    stored = Counter(run.stored())
    assert set(stored) == expected
    report = run.final_report()
    twice = sum(stored.values()) - len(stored)
    assert twice <= report["possibly_duplicated"]
    assert report["records_accepted"] == len(expected)  # each range acknowledged once
    in_flight = {
        (a["source"], n) for a in report["ambiguous_batches"]
        for n in range(a["first_line"], a["last_line"] + 1)
    }  # fmt: skip
    assert report["possibly_duplicated"] == sum(a["records"] for a in report["ambiguous_batches"])
    assert len(in_flight) >= twice


async def test_a_half_written_line_waits_for_its_newline(
    tmp_path: Path, server: RunningServer
) -> None:
    """Even once its file is idle: never dead-lettered, sent when the newline comes."""
    logs, growing, half = half_written(tmp_path, 7, 25)
    run = Follow(tmp_path, server, [str(logs)])
    run.cmd[run.cmd.index("--idle-timeout") + 1] = "0.3"
    await run.start()
    await run.has(set(range(7)))
    await asyncio.sleep(1.0)  # past the idle timeout: the file is idle, its half line unread
    write_lines(logs / "other.jsonl", [line(interaction(100))])  # a round after that
    await run.has({100})
    assert dead_letters(run.state / "dead-letter.jsonl") == []
    assert sorted(run.stored()) == [*range(7), 100]
    with open(growing, "ab") as fh:
        fh.write(half[25:] + b"\n")
    await run.has({7})
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == [*range(8), 100]
    assert dead_letters(run.state / "dead-letter.jsonl") == []


async def test_a_partial_batch_goes_out_after_the_linger(
    tmp_path: Path, server: RunningServer
) -> None:
    """3 records of a 1,000-record batch, on a file that stays active: only the linger
    sends them (the idle timeout is far away)."""
    logs = history(tmp_path, 3)
    run = Follow(tmp_path, server, [str(logs)], "--batch-size", "1000", "--idle-timeout", "600")
    os.utime(logs / "2026-06-01.jsonl")  # recently written: it stays followed
    await run.start()
    await run.has({0, 1, 2})
    await write(tmp_path, [{"path": str(logs / "2026-06-01.jsonl"), "first": 3, "count": 2}])
    await run.has({3, 4})
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == [0, 1, 2, 3, 4]
    assert (await server.stats())["requests"]["received"] == 2


@pytest.mark.parametrize("how", ["truncated", "replaced"])
async def test_a_file_truncated_or_replaced_under_the_follower_is_reported(
    tmp_path: Path, server: RunningServer, how: str
) -> None:
    logs = history(tmp_path, 40)
    target = logs / "2026-06-01.jsonl"
    os.utime(target)
    run = Follow(tmp_path, server, [str(logs)])
    await run.start()
    await run.has(set(range(40)))
    if how == "truncated":
        with open(target, "r+b") as fh:
            fh.truncate(10)
    else:
        write_lines(logs / "new.tmp", [line(interaction(900))])
        os.replace(logs / "new.tmp", target)
    await run.until(lambda: f"{how} " in run.output(), f"the {how} warning")
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    warnings = run.final_report()["warnings"]
    assert any(str(target) in w and how in w and "not supported" in w for w in warnings)
    assert sorted(run.stored()) == list(range(40))
    # the next leg refuses it as changed, as a backfill does, naming it
    await run.start()
    assert run.proc is not None
    assert await asyncio.wait_for(run.proc.wait(), 60) == 2
    assert str(target) in run.output() and "changed since the checkpoint" in run.output()


@pytest.mark.parametrize("first_lines", [0, 1])
async def test_a_file_replaced_while_the_follower_was_down_is_refused(
    tmp_path: Path, server: RunningServer, first_lines: int
) -> None:
    """The file was empty (or one line) when the leg registered it, then grew to 100 lines,
    all acknowledged, and was replaced by another while the follower was down: the hashes
    of the bytes known at registration still match, but the resume point is no longer the
    start of a line. Resuming would skip the new file's first 99 records and dead-letter a
    fragment; the next leg refuses it instead (exit 2), as a backfill does."""
    logs = tmp_path / "logs"
    logs.mkdir()
    target = logs / "app.jsonl"
    write_lines(target, [line(interaction(0))] if first_lines else [])
    run = Follow(tmp_path, server, [str(logs)])
    await run.start()
    await run.until(lambda: _checkpoint(run.state, "SELECT count(*) FROM files") == 1, "registered")
    await run.has(set(range(first_lines)))
    await write(tmp_path, [{"path": str(target), "first": first_lines, "count": 100 - first_lines}])
    acked = "SELECT max(end_line) FROM batches WHERE state = 'acked'"
    await run.until(lambda: _checkpoint(run.state, acked) == 100, "100 lines acknowledged")
    assert run.proc is not None
    run.proc.kill()
    assert await run.proc.wait() == -signal.SIGKILL
    replacement = [line(interaction(0))] if first_lines else []
    replacement += [line(interaction(n)) for n in range(1000, 1300)]
    write_lines(logs / "app.tmp", replacement)
    os.replace(logs / "app.tmp", target)
    await run.start()
    try:
        assert await asyncio.wait_for(run.proc.wait(), 60) == 2
    finally:
        if run.proc.returncode is None:  # it followed the replacement: stop it
            run.proc.kill()
            await run.proc.wait()
    assert str(target) in run.output() and "changed since the checkpoint" in run.output()
    assert sorted(run.stored()) == list(range(100))
    assert dead_letters(run.state / "dead-letter.jsonl") == []


async def test_restart_resumes_a_grown_file_and_checkpoint_ranges_are_merged(
    tmp_path: Path, server: RunningServer
) -> None:
    logs = history(tmp_path, 45)
    target = str(logs / "2026-06-01.jsonl")
    run = Follow(tmp_path, server, [str(logs)], "--batch-size", "10")
    await run.start()
    await run.has(set(range(45)))
    for first in range(45, 95, 5):  # ten small appends, ten small batches
        await write(tmp_path, [{"path": target, "first": first, "count": 5}])
        await run.has(set(range(first + 5)))
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    await write(tmp_path, [{"path": target, "first": 95, "count": 5, "split": True}])
    await run.start()
    await run.has(set(range(100)))
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert "changed" not in output
    assert sorted(run.stored()) == list(range(100))
    report = run.final_report()
    requests = (await server.stats())["requests"]["received"]
    assert report["batches_acknowledged"] == requests >= 16
    db = sqlite3.connect(run.state / "checkpoint.sqlite")
    rows = db.execute("SELECT start_line, end_line, records FROM batches").fetchall()
    db.close()
    assert rows == [(0, 100, 100)]  # every acknowledged batch folded into one range


async def test_status_shows_the_load_following(tmp_path: Path, server: RunningServer) -> None:
    logs = history(tmp_path, 20)
    run = Follow(tmp_path, server, [str(logs)])
    await run.start()
    await run.has(set(range(20)))

    async def status() -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backfill", "status", "--state-dir", str(run.state),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        return out.decode()

    text = await _eventually(status, "following:          yes")
    assert "newest record acknowledged" in text and "0 records waiting" in text
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", "status", "--state-dir", str(run.state), "--json",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    follow = json.loads((await proc.communicate())[0])["follow"]
    assert follow["following"] is True and follow["records_waiting"] == 0
    code, _ = await run.stop(signal.SIGINT)
    assert code == 130
    assert "following:          stopped (exit 130)" in await status()


async def _eventually(get: Callable[[], Awaitable[str]], wanted: str) -> str:
    async with asyncio.timeout(30):
        while wanted not in (text := await get()):
            await asyncio.sleep(0.1)
    return text


async def test_shards_follow_the_files_they_own(tmp_path: Path, server: RunningServer) -> None:
    logs = history(tmp_path, 10)
    runs = []
    for index in (0, 1):
        shard_tmp = tmp_path / f"s{index}"
        shard_tmp.mkdir()
        run = Follow(shard_tmp, server, [str(logs)], "--shard", f"{index}/2")
        run.cmd[run.cmd.index("--state-dir") + 1] = str(tmp_path / "state")
        await run.start()
        runs.append(run)
    steps = [
        {"path": str(logs / f"2026-07-{d:02d}.jsonl"), "first": 100 * d, "count": 20}
        for d in range(1, 7)
    ]
    await write(tmp_path, steps)
    expected = set(range(10)) | {100 * d + i for d in range(1, 7) for i in range(20)}
    await runs[0].has(expected)
    for run in runs:
        code, output = await run.stop(signal.SIGINT)
        assert code == 130, output
    assert sorted(runs[0].stored()) == sorted(expected)
    files = [run.final_report()["files"] for run in runs]
    assert sum(files) == 7 and min(files) > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--processes", "2"], "--follow works with one process"),
        (["--kind", "products"], "--follow loads interactions only"),
        (["s3://bucket/logs/"], "--follow watches local files only"),
    ],
)
def test_follow_refuses_what_it_cannot_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    logs = history(tmp_path, 1)
    code = main(["run", *extra, str(logs), "--follow", "--dry-run", "--state-dir", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err


def test_linger_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = history(tmp_path, 1)
    code = main(["run", str(logs), "--follow", "--linger", "0", "--dry-run"])
    assert code == 2
    assert "--linger must be a positive number of seconds, got 0.0" in capsys.readouterr().err


async def soak(tmp_path: Path, server: RunningServer, kills: int, seed: int) -> None:
    """A writer appends for the whole test while the follower is killed (mostly -9) and
    restarted `kills` times; then every record is there, duplicates only as reported."""
    rng = random.Random(seed)
    logs = history(tmp_path, 50)
    server.set_faults(Faults(latency="0.02"))
    run = Follow(tmp_path, server, [str(logs)], "--batch-size", "7")
    steps: list[dict[str, Any]] = []
    n = 1000
    for i in range(kills * 6):
        count = rng.choice([1, 3, 25, 80])
        day = str(logs / f"2026-06-{2 + i // 10:02d}.jsonl")
        steps.append({"path": day, "first": n, "count": count, "split": True, "pause": 0.03})
        n += count
    writer = asyncio.create_task(write(tmp_path, steps))
    for _ in range(kills):
        await run.start()
        before = len(run.stored())
        await run.until(lambda b=before: len(run.stored()) > b + 5, "progress")  # type: ignore[misc]
        sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
        code, output = await run.stop(sig)
        assert code in (-signal.SIGKILL, 143), output
    await writer
    await run.start()
    expected = set(range(50)) | set(range(1000, n))
    await run.has(expected)
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    stored = Counter(run.stored())
    assert set(stored) == expected
    assert sum(stored.values()) - len(stored) <= run.final_report()["possibly_duplicated"]


async def test_soak_short(tmp_path: Path, server: RunningServer) -> None:
    await soak(tmp_path, server, kills=2, seed=1)


@pytest.mark.chaos
async def test_soak_many_kills(tmp_path: Path, server: RunningServer) -> None:
    """`make chaos`: twenty kills while a writer appends bursts to growing and new files."""
    await soak(tmp_path, server, kills=20, seed=7)


async def _blocks_now(tail: Any, blocks: Any) -> list[Any]:
    """The blocks a Tail yields until it has caught up (its heartbeat)."""
    out = []
    while True:
        block = await anext(blocks)
        if tail.caught_up:
            return out
        out.append(block)


async def test_tail_yields_complete_lines_only_with_exact_offsets(tmp_path: Path) -> None:
    from backfill.sources import Tail

    path = tmp_path / "app.jsonl"
    path.write_bytes(b"\xef\xbb\xbffirst\nsec")
    tail = Tail(path, 0, 0, max_line_bytes=10)
    tail.open()
    blocks = tail.blocks()
    [block] = await _blocks_now(tail, blocks)
    assert (block.lines, block.first, block.offset, block.end) == ([b"first"], 0, 3, 9)
    assert tail.waiting_for_newline and tail.unread == 3
    with open(path, "ab") as fh:
        fh.write(b"ond\n" + b"x" * 25)
    [block] = await _blocks_now(tail, blocks)
    assert (block.lines, block.first, block.end) == ([b"second"], 1, 16)
    with open(path, "ab") as fh:
        fh.write(b"x" * 5 + b"\nok\n")
    [block] = await _blocks_now(tail, blocks)  # the 30-byte line is a problem, not buffered
    assert block.lines == [b"", b"ok"] and block.first == 2
    assert block.problems[2].length == 30 and "--max-line-bytes" in block.problems[2].reason
    assert block.end_offset(3) == 47  # where "ok" starts: after the 30 bytes and a newline
    assert block.end == 50 == path.stat().st_size == tail.offset
    assert not tail.waiting_for_newline and tail.replaced is None
    await blocks.aclose()
    tail.close()


async def test_a_run_without_follow_finishes_a_followed_load(
    tmp_path: Path, server: RunningServer
) -> None:
    """The last line without a newline, held by --follow, is sent by a plain run after it;
    that run accepts the file that grew since (it was followed), and refuses a rewritten one."""
    logs, path, last = half_written(tmp_path, 5, 20)
    run = Follow(tmp_path, server, [str(logs)])
    await run.start()
    await run.has(set(range(5)))
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    with open(path, "ab") as fh:
        fh.write(last[20:])  # complete, still without a newline: the file's last line
    plain = [a for a in run.cmd if a != "--follow"]
    proc = await asyncio.create_subprocess_exec(
        *plain, env=run.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert sorted(run.stored()) == list(range(6))
    assert dead_letters(run.state / "dead-letter.jsonl") == []
    write_lines(path, [line(interaction(9))])  # rewritten: smaller, other bytes
    proc = await asyncio.create_subprocess_exec(
        *plain, env=run.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 2 and "changed since the checkpoint" in out.decode()


async def test_an_empty_directory_is_followed_until_files_come(
    tmp_path: Path, server: RunningServer
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    run = Follow(tmp_path, server, [str(logs), str(tmp_path / "other" / "*.jsonl")])
    await run.start()
    await run.until(lambda: "following 0 files" in run.output(), "a first progress line")
    await write(tmp_path, [{"path": str(logs / "first.jsonl"), "first": 0, "count": 3}])
    await run.has({0, 1, 2})
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == [0, 1, 2]


async def test_an_input_deleted_while_followed_is_no_error(
    tmp_path: Path, server: RunningServer
) -> None:
    """Retention deletes a file named as an input: following goes on with the others."""
    logs = history(tmp_path, 5)
    named = logs / "2026-06-01.jsonl"
    run = Follow(tmp_path, server, [str(named), str(logs / "*.log.jsonl")])
    await run.start()
    await run.has(set(range(5)))
    named.unlink()
    await write(tmp_path, [{"path": str(logs / "b.log.jsonl"), "first": 50, "count": 2}])
    await run.has({50, 51})
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(run.stored()) == [*range(5), 50, 51]


async def test_a_mapped_csv_file_followed_gives_what_a_plain_run_gives(
    tmp_path: Path, server: RunningServer
) -> None:
    """The mapping's per-file state (the CSV header) lives across the follower's rounds."""
    root = Path(__file__).parent.parent / "configs"
    sample = root / "samples" / "ecommerce-events.csv"
    config = ("--config", str(root / "mapping-ecommerce-csv.toml"))
    logs = tmp_path / "logs"
    logs.mkdir()
    growing = logs / "events.csv"
    run = Follow(tmp_path, server, [str(logs)], *config)
    plain = [x for x in run.cmd if x != "--follow"]
    plain[plain.index(str(logs))] = str(sample)
    plain[plain.index("--state-dir") + 1] = str(tmp_path / "plain")
    proc = await asyncio.create_subprocess_exec(
        *plain, env=run.env, stdout=asyncio.subprocess.DEVNULL
    )
    assert await proc.wait() == 0
    reference = sorted(server.records("interactions"))
    await server.reset()
    rows = sample.read_bytes().splitlines(keepends=True)
    growing.write_bytes(b"".join(rows[:5]))
    await run.start()
    await run.until(lambda: len(server.records("interactions")) >= 4, "the first rows")
    rest = b"".join(rows[5:])
    with open(growing, "ab") as fh:
        fh.write(rest[:37])
        fh.flush()
        await asyncio.sleep(0.2)  # a round sees the half row
        fh.write(rest[37:])
    await run.until(lambda: len(server.records("interactions")) >= len(reference), "every row")
    code, output = await run.stop(signal.SIGINT)
    assert code == 130, output
    assert sorted(server.records("interactions")) == reference and len(reference) == 16
