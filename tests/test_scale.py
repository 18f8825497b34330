"""Scaling out: shards of one load on many machines, and worker processes on one machine.

Real `backfill` processes against the embedded server on loopback; what reached the server
is checked record by record."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from backfill.config import Settings
from backfill.parallel import worker_settings
from backfill.server import Faults, RunningServer
from backfill.shards import Shard, owned_by, shard_of
from backfill.sources import find_sources
from tests import test_privacy_run as privacy
from tests.helpers import interaction, line, write_lines
from tests.test_resume import check_invariants, make_inputs

SHARDS = 4


async def backfill(*args: str, key: str = "", env: dict[str, str] | None = None) -> tuple[int, str]:
    """One `backfill` command: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", *args,
        env={**os.environ, "MISO_API_KEY": key, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, (out + err).decode()


def make_logs(root: Path, files: int, per_file: int) -> tuple[list[bytes], int]:
    """`files` logs under root (two levels), each with one broken line: (valid lines, invalid)."""
    good: list[bytes] = []
    for f in range(files):
        rows = [line(interaction(f * per_file + i)) for i in range(per_file)]
        good += rows
        path = root / f"month-{f % 3}" / f"day-{f:02d}.jsonl{'.gz' if f % 2 else ''}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_lines(path, [*rows[:5], b'{"broken": true', *rows[5:]], gz=bool(f % 2))
    return good, files


def run_args(server: RunningServer, state: Path, *inputs: str) -> list[str]:
    return [
        "run", *inputs, "--endpoint", server.url, "--state-dir", str(state),
        "--batch-size", "50", "--progress", "off", "--backoff-initial", "0.01",
    ]  # fmt: skip


async def test_four_shards_at_once_on_one_state_root_deliver_every_record_once(
    tmp_path: Path, server: RunningServer
) -> None:
    good, invalid = make_logs(tmp_path / "logs", files=12, per_file=120)
    state = tmp_path / "state"
    args = run_args(server, state, str(tmp_path / "logs"))
    legs = [
        backfill(*args, "--shard", f"{i}/{SHARDS}", "--report", str(tmp_path / f"r{i}.json"),
                 key=server.secret_key)
        for i in range(SHARDS)
    ]  # fmt: skip
    for code, out in await asyncio.gather(*legs):
        assert code == 0, out
    stored = Counter(server.records("interactions"))
    assert set(stored) == set(good) and max(stored.values()) == 1
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(SHARDS)]
    assert sum(r["files"] for r in reports) == 12
    assert sum(r["records_accepted"] for r in reports) == len(good)
    assert all(r["state_dir"] == str(state / f"shard-0{i}-of-04") for i, r in enumerate(reports))
    for i in range(SHARDS):  # each shard's dead letters are its own
        dead = (state / f"shard-0{i}-of-04" / "dead-letter.jsonl").read_text().splitlines()
        assert len(dead) == reports[i]["records_invalid"] == reports[i]["files"]

    code, out = await backfill("status", "--state-dir", str(state), "--json")
    assert code == 0, out
    status = json.loads(out)
    assert [s["name"] for s in status["shards"]] == [f"shard-0{i}-of-04" for i in range(4)]
    assert status["records_read"] == len(good) + invalid
    assert (status["records_accepted"], status["records_invalid"]) == (len(good), invalid)
    assert (status["files"], status["files_done"], status["status"]) == (12, 12, "completed")
    assert status["possibly_duplicated"] == 0 and status["exit_code"] == 0
    for shard, report in zip(status["shards"], reports, strict=True):
        assert shard["records_accepted"] == report["records_accepted"]
        assert shard["records_read"] == report["records_read"]
    code, text = await backfill("status", "--state-dir", str(state))
    assert code == 0, text
    assert f"state root:         {state} (4 checkpoints)" in text
    total = f"total:          completed; files 12 done of 12; read {len(good) + invalid:,}, "
    assert total + f"accepted {len(good):,}, invalid 12, rejected 0" in text
    for i, r in enumerate(reports):
        assert f"shard-0{i}-of-04: completed; files {r['files']} done of {r['files']}" in text


async def test_a_shard_without_files_completes_and_says_so(
    tmp_path: Path, server: RunningServer
) -> None:
    make_logs(tmp_path / "logs", files=3, per_file=10)
    owners = {shard_of(s.relative, 16) for s in find_sources([str(tmp_path / "logs")])}
    idle = min(set(range(16)) - owners)
    args = run_args(server, tmp_path / "state", str(tmp_path / "logs"))
    code, out = await backfill(*args, "--shard", f"{idle}/16", key=server.secret_key)
    assert code == 0, out
    assert f"shard {idle}/16: no input file belongs to this shard; nothing to do" in out
    assert server.records("interactions") == []


def test_the_shard_of_a_file_is_the_same_from_two_mount_points(tmp_path: Path) -> None:
    make_logs(tmp_path / "a" / "logs", files=12, per_file=3)
    shutil.copytree(tmp_path / "a" / "logs", tmp_path / "b" / "mnt" / "data")
    (tmp_path / "c").symlink_to(tmp_path / "a" / "logs")
    views = [
        [str(tmp_path / "a" / "logs")],
        [str(tmp_path / "b" / "mnt" / "data" / "*" / "*.jsonl*")],
        [str(tmp_path / "c")],
    ]
    for index in range(SHARDS):
        owned = [sorted(s.relative for s in owned_by(find_sources(v), Shard(index, SHARDS)))
                 for v in views]  # fmt: skip
        assert owned[0] and owned[0] == owned[1] == owned[2]
    everyone = [s.relative for s in find_sources(views[0])]
    shards = [owned_by(find_sources(views[0]), Shard(i, SHARDS)) for i in range(SHARDS)]
    assert sorted(s.relative for part in shards for s in part) == sorted(everyone)
    # a new file moves no other file to another shard
    write_lines(tmp_path / "a" / "logs" / "month-0" / "new.jsonl", [b"{}"])
    again = [owned_by(find_sources(views[0]), Shard(i, SHARDS)) for i in range(SHARDS)]
    for before, after in zip(shards, again, strict=True):
        assert {s.relative for s in before} <= {s.relative for s in after}


async def test_the_shard_index_comes_from_the_scheduler_or_is_a_usage_error(
    tmp_path: Path,
) -> None:
    make_logs(tmp_path / "logs", files=2, per_file=5)
    state = tmp_path / "state"
    base = ["run", str(tmp_path / "logs"), "--state-dir", str(state), "--dry-run",
            "--progress", "off"]  # fmt: skip
    clean = {"JOB_COMPLETION_INDEX": "", "AWS_BATCH_JOB_ARRAY_INDEX": "",
             "SLURM_ARRAY_TASK_ID": "", "SLURM_ARRAY_TASK_MIN": ""}  # fmt: skip
    cases: list[tuple[dict[str, str], str]] = [
        ({"JOB_COMPLETION_INDEX": "1"}, "shard-01-of-04"),
        ({"AWS_BATCH_JOB_ARRAY_INDEX": "2"}, "shard-02-of-04"),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "4"}, "shard-03-of-04"),
    ]
    for env, name in cases:
        code, out = await backfill(*base, "--shard", "4", env={**clean, **env})
        assert code == 0, out
        assert (state / name / "dry-run" / "checkpoint.sqlite").is_file()
    errors: list[tuple[list[str], dict[str, str], str]] = [
        (["--shard", "4"], {}, "none of $JOB_COMPLETION_INDEX, $AWS_BATCH_JOB_ARRAY_INDEX"),
        (["--shard", "4"], {"JOB_COMPLETION_INDEX": "4"}, "the shard index 4 is out of range"),
        (["--shard", "4/4"], {}, "shards are numbered 0 to 3"),
        (["--shard=-1/4"], {}, "the shard index -1 is out of range"),
        (["--shard", "x/4"], {}, "expected I/N or N (e.g. 3/16 or 16), got 'x/4'"),
        (["--shard", "0/0"], {}, "the number of shards must be at least 1, got 0"),
    ]
    before = sorted(p.name for p in state.iterdir())
    for flags, env, said in errors:
        code, out = await backfill(*base, *flags, env={**clean, **env})
        assert code == 2 and said in out and "Traceback" not in out, out
    assert sorted(p.name for p in state.iterdir()) == before


# -- worker processes on one machine ------------------------------------------------------


def workers_of(pid: int) -> list[int]:
    """The worker processes a `backfill run --processes N` has spawned."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/cmdline").read_bytes():  # not a zombie: alive
                found.append(int(child))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


class Load:
    """`backfill run` over make_inputs' files (4 files x 2,500 records), with a report."""

    def __init__(self, tmp_path: Path, server: RunningServer) -> None:
        self.inputs, self.origin = make_inputs(tmp_path)
        self.report = tmp_path / "report.json"
        self.args = [*run_args(server, tmp_path / "state", *self.inputs), "--batch-size", "250",
                     "--concurrency", "4", "--report", str(self.report)]  # fmt: skip
        self.server = server

    async def start(self, *extra: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backfill", *self.args, *extra,
            env={**os.environ, "MISO_API_KEY": self.server.secret_key},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

    async def received(self) -> int:
        return int((await self.server.stats())["requests"]["received"])

    async def until_received(self, proc: asyncio.subprocess.Process, requests: int) -> None:
        while await self.received() < requests:
            assert proc.returncode is None, "the leg ended before the signal"
            await asyncio.sleep(0.005)

    async def finish(self, proc: asyncio.subprocess.Process) -> tuple[int, str]:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, (out + err).decode()


@pytest.mark.parametrize("target", ["parent", "group"])
async def test_processes_killed_then_resumed_with_one_process_lose_nothing(
    tmp_path: Path, server: RunningServer, target: str
) -> None:
    load = Load(tmp_path, server)
    server.set_faults(Faults(latency="0.05"))
    # 100 batches a file, 2 in flight per worker: each is far from the end of its file
    proc = await load.start("--processes", "2", "--batch-size", "25")
    await load.until_received(proc, 10)
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL) if target == "parent" else os.killpg(proc.pid, signal.SIGKILL)
    at_kill = await load.received()
    code, output = await load.finish(proc)
    assert code == -signal.SIGKILL, output
    for _ in range(500):  # the workers notice within a few seconds (at once on Linux)
        if not any(alive(w) for w in workers):
            break
        await asyncio.sleep(0.01)
    assert not any(alive(w) for w in workers)
    # at most what was in flight (4) and a request or two of the instant of the kill; a
    # worker that kept going would have sent the rest of its file (90 batches or more)
    assert await load.received() - at_kill <= 8, "a worker kept sending after its parent died"

    server.set_faults(Faults())
    code, output = await load.finish(await load.start("--processes", "1"))
    assert code == 0, output
    report = json.loads(load.report.read_text())
    check_invariants(server, load.origin, report)
    assert report["legs"] == 2 and report["files"] == 4


async def test_processes_drain_on_sigterm_and_resume_with_another_number(
    tmp_path: Path, server: RunningServer
) -> None:
    load = Load(tmp_path, server)
    server.set_faults(Faults(latency="0.05"))
    proc = await load.start("--processes", "2", "--progress", "log", "--progress-interval", "0.1")
    await load.until_received(proc, 12)
    proc.send_signal(signal.SIGTERM)
    code, output = await load.finish(proc)
    assert code == 143, output
    assert output.count("SIGTERM: stopping every worker") == 1
    assert output.count("progress:") >= 1 and output.count("backfill interrupted") == 1
    first = json.loads(load.report.read_text())
    assert first["status"] == "interrupted" and first["ambiguous_batches"] == []
    assert 0 < first["records_accepted"] < len(load.origin)
    assert Counter(server.records("interactions")).most_common(1)[0][1] == 1

    server.set_faults(Faults())
    code, output = await load.finish(await load.start("--processes", "3"))
    assert code == 0, output
    report = json.loads(load.report.read_text())
    assert set(report) == set(first) - {"resume_command"}
    stored = Counter(server.records("interactions"))
    assert set(stored) == set(load.origin) and max(stored.values()) == 1
    assert report["records_accepted"] == report["records_read"] == len(load.origin)
    assert report["possibly_duplicated"] == 0 and report["legs"] == 2
    assert report["this_leg"]["records_accepted"] == len(load.origin) - first["records_accepted"]
    code, out = await backfill("status", "--state-dir", str(tmp_path / "state"), "--json")
    assert code == 0, out
    status = json.loads(out)  # --processes keeps one checkpoint: a plain state dir
    assert (status["records_accepted"], status["legs"], status["shards"]) == (10_000, 2, [])
    assert (status["files_done"], status["status"], status["exit_code"]) == (4, "completed", 0)


async def test_the_worst_exit_code_of_any_worker_is_the_commands(
    tmp_path: Path, server: RunningServer
) -> None:
    load = Load(tmp_path, server)
    server.set_faults(Faults(fail_first=1, fail_status=401))
    code, output = await load.finish(await load.start("--processes", "2"))
    assert code == 3, output
    report = json.loads(load.report.read_text())
    assert (report["status"] == "stopped" and "401" in (report["error"] or "")) or "key" in (
        report["error"] or ""
    )
    server.set_faults(Faults())
    code, output = await load.finish(await load.start("--processes", "2"))
    assert code == 0, output
    check_invariants(server, load.origin, json.loads(load.report.read_text()))


async def test_a_worker_killed_alone_stops_the_load_which_resumes_exactly(
    tmp_path: Path, server: RunningServer
) -> None:
    load = Load(tmp_path, server)
    server.set_faults(Faults(latency="0.05"))
    proc = await load.start("--processes", "2")
    await load.until_received(proc, 10)
    victim = min(workers_of(proc.pid))
    os.kill(victim, signal.SIGKILL)
    code, output = await load.finish(proc)
    assert code == 3, output
    report = json.loads(load.report.read_text())
    assert report["status"] == "stopped"
    assert re.fullmatch(r"worker process [01] died \(signal 9\)", report["error"]), report["error"]

    server.set_faults(Faults())
    code, output = await load.finish(await load.start())
    assert code == 0, output
    check_invariants(server, load.origin, json.loads(load.report.read_text()))


async def test_processes_share_one_dead_letter_file_entry_by_entry(
    tmp_path: Path, server: RunningServer
) -> None:
    good, invalid = make_logs(tmp_path / "logs", files=12, per_file=200)
    state = tmp_path / "state"
    report_file = tmp_path / "report.json"
    args = run_args(server, state, str(tmp_path / "logs"))
    code, out = await backfill(
        *args, "--processes", "3", "--report", str(report_file), key=server.secret_key
    )
    assert code == 0, out
    stored = Counter(server.records("interactions"))
    assert set(stored) == set(good) and max(stored.values()) == 1
    report = json.loads(report_file.read_text())
    assert (report["records_read"], report["records_invalid"]) == (len(good) + invalid, invalid)
    assert report["records_accepted"] == len(good) and report["files"] == 12
    entries = [json.loads(x) for x in (state / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted((Path(e["source"]).name, e["line"]) for e in entries) == sorted(
        (f"day-{f:02d}.jsonl{'.gz' if f % 2 else ''}", 6) for f in range(12)
    )


async def test_the_privacy_step_in_workers_is_counted_and_warned_once(
    tmp_path: Path, server: RunningServer
) -> None:
    inputs = [str(privacy.jsonl(tmp_path / f"e{i}.jsonl", privacy.events())) for i in range(3)]
    report_file = tmp_path / "report.json"
    code, out, err = await privacy.cli(
        server, "run", *inputs, "--config", str(privacy.config(tmp_path, "warn")),
        "--state-dir", str(tmp_path / "state"), "--report", str(report_file),
        "--progress", "off", "--processes", "2",
    )  # fmt: skip
    assert code == 0, err
    stored = privacy.stored(server, "interactions")
    assert len(stored) == 18
    originals = {privacy.pseudonym(r["user_id"]) for r in privacy.events()}
    assert {r["user_id"] for r in stored} == originals
    report = json.loads(report_file.read_text())
    assert (report["privacy"]["ids_hashed"], report["privacy"]["ips_truncated"]) == (36, 18)
    assert report["privacy"]["pii_findings"] == {
        "card@context.custom_context.note": 3,
        "email@context.page.url": 3,
        "phone@search.keywords": 3,
    }
    warned = [x for x in (out + err).splitlines() if x.startswith("warning: [privacy]")]
    assert len(warned) == 1 and "(3 card, 3 email, 3 phone;" in warned[0]


async def test_processes_send_one_version_of_each_product_across_files(
    tmp_path: Path, server: RunningServer
) -> None:
    """Every worker plans the whole catalog: the newest version of an id wins whichever
    worker reads which file."""

    def product(pid: int, version: int) -> bytes:
        return json.dumps({"product_id": f"p{pid}", "title": f"v{version}",
                           "updated_at": f"2026-06-0{version}T00:00:00Z"}).encode()  # fmt: skip

    for f in range(4):  # file f holds version f+1 of every product
        write_lines(tmp_path / f"products-{f}.jsonl", [product(p, f + 1) for p in range(30)])
    report_file = tmp_path / "report.json"
    args = run_args(server, tmp_path / "state", *(str(p) for p in sorted(tmp_path.glob("*.jsonl"))))
    code, out = await backfill(
        *args, "--kind", "products", "--processes", "2", "--report", str(report_file),
        key=server.secret_key,
    )  # fmt: skip
    assert code == 0, out
    stored = [json.loads(r) for r in server.records("products")]
    assert sorted((r["product_id"], r["title"]) for r in stored) == sorted(
        (f"p{p}", "v4") for p in range(30)
    )
    report = json.loads(report_file.read_text())
    assert (report["records_superseded"], report["records_accepted"]) == (90, 30)


def test_worker_budgets_add_up_to_the_commands_fixed_or_adaptive() -> None:
    """Every budget given on the command line is a total, split among the workers."""
    fixed = Settings(concurrency=9, max_records_per_second=1000.0)
    shares = worker_settings(fixed, 4)
    assert [s.concurrency for s in shares] == [3, 2, 2, 2]
    assert sum(s.max_records_per_second or 0 for s in shares) == pytest.approx(1000.0)
    auto = Settings(concurrency_mode="auto", max_concurrency=10, initial_concurrency=4)
    shares = worker_settings(auto, 3)
    assert [s.max_concurrency for s in shares] == [4, 3, 3]
    assert [s.initial_concurrency for s in shares] == [2, 1, 1]
    assert all(s.concurrency_mode == "auto" and s.processes == 1 for s in shares)


def test_metrics_with_processes_are_refused_before_anything_starts(tmp_path: Path) -> None:
    for metrics in (["--metrics-port", "0"], ["--metrics-textfile", str(tmp_path / "m.prom")]):
        proc = subprocess.run(
            [sys.executable, "-m", "backfill", "run", str(tmp_path / "none.jsonl"),
             "--processes", "2", "--state-dir", str(tmp_path / "state"), *metrics],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "work with one process only" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


# -- review of parallel.py: what the parent plans once, and what it adds up -----------------

IN_OPEN = 0x20  # inotify(7)


class Opens:
    """How many times each file of a directory is opened, by any process (inotify)."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0 and libc.inotify_add_watch(self.fd, bytes(directory), IN_OPEN) >= 0

    def take(self) -> Counter[str]:
        """The opens since the last call, by file name."""
        seen: Counter[str] = Counter()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return seen
            at = 0
            while at < len(data):
                _, mask, _, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16 : at + 16 + size].rstrip(b"\0").decode()
                if mask & IN_OPEN and name:
                    seen[name] += 1
                at += 16 + size

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
async def test_processes_prescan_the_catalog_once_as_one_process_does(
    tmp_path: Path, server: RunningServer
) -> None:
    """The parent's plan goes to the workers: with --processes 2 each input is opened as
    often as with one process (listing, the two pre-scan passes, the send pass), not pre-
    scanned again by every worker."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for f in range(4):
        rows = [{"product_id": f"p{p}", "title": f"v{f}"} for p in range(20)]
        write_lines(logs / f"products-{f}.jsonl", [json.dumps(r).encode() for r in rows])
    opens = Opens(logs)
    try:
        counts = []
        for n, state in (("1", "one"), ("2", "two")):
            args = run_args(server, tmp_path / state, str(logs))
            code, out = await backfill(
                *args, "--kind", "products", "--processes", n, key=server.secret_key
            )
            assert code == 0, out
            counts.append(opens.take())
    finally:
        opens.close()
    one, two = counts
    assert set(one) == {f"products-{f}.jsonl" for f in range(4)}
    assert two == one, f"one process: {dict(one)}; two: {dict(two)}"


async def test_processes_count_every_request_the_server_saw_once_resumed(
    tmp_path: Path, server: RunningServer
) -> None:
    """Each worker adds its requests to the leg's row: after a kill -9 of the parent (so no
    end of leg) and a resume, the report's requests are the server's, within what was in
    flight at the kill. A worker setting the row would have erased the other's (about half)."""
    load = Load(tmp_path, server)
    server.set_faults(Faults(latency="0.05"))
    proc = await load.start("--processes", "2", "--batch-size", "25")
    await load.until_received(proc, 60)
    os.kill(proc.pid, signal.SIGKILL)
    await load.finish(proc)
    server.set_faults(Faults(fail_first=3))  # three retries in the resumed leg
    code, output = await load.finish(await load.start("--processes", "1"))
    assert code == 0, output
    report = json.loads(load.report.read_text())
    received = await load.received()
    assert received - 6 <= report["batches_sent"] <= received, (report["batches_sent"], received)
    assert report["retries"] == 3


async def test_processes_report_exactly_the_requests_and_retries_the_server_saw(
    tmp_path: Path, server: RunningServer
) -> None:
    load = Load(tmp_path, server)
    server.set_faults(Faults(fail_first=5))
    code, output = await load.finish(await load.start("--processes", "2"))
    assert code == 0, output
    report = json.loads(load.report.read_text())
    assert report["batches_sent"] == await load.received()
    assert (report["retries"], report["records_accepted"]) == (5, 10_000)
    code, out = await backfill("status", "--state-dir", str(tmp_path / "state"), "--json")
    assert json.loads(out)["batches_sent"] == report["batches_sent"], out


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_an_all_invalid_input_gets_the_same_hint_with_processes(
    tmp_path: Path, server: RunningServer, processes: str
) -> None:
    """The workers' first invalid lines go back to the parent, which guesses the cause."""
    document = tmp_path / "export.json"
    document.write_text(json.dumps([interaction(i) for i in range(3)], indent=1) + "\n")
    lines = len(document.read_text().splitlines())
    code, out = await backfill(
        *run_args(server, tmp_path / "state", str(document)), "--processes", processes,
        key=server.secret_key,
    )  # fmt: skip
    assert code == 3, out
    assert (
        f"all {lines} records read are invalid, so nothing was loaded (this looks like one " in out
    )
    assert "`jq -c '.[]' FILE > FILE.jsonl`" in out
