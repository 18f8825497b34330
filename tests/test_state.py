"""The state dir as a user meets it: rehearsals, lost checkpoints, `status`, a full disk.

Every test drives real `backfill` subprocesses against the embedded server on 127.0.0.1 and
checks what the server stored, what the state dir holds and what the user was told.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from backfill.errors import run_status
from backfill.server import RunningServer
from tests.helpers import dead_letters, interaction, line, write_lines


async def backfill(
    *args: str, key: str = "", max_file_bytes: int | None = None
) -> tuple[int, str, str]:
    """One `backfill` command: (exit code, stdout, stderr). `max_file_bytes`: no file it
    writes may grow beyond that (RLIMIT_FSIZE: a write past it fails with EFBIG, as on a
    full disk; Python ignores SIGXFSZ)."""
    env = {**os.environ, "MISO_API_KEY": key}

    def limit() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", *args, env=env, preexec_fn=limit,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def run_args(server: RunningServer, state: Path, report: Path, *inputs: Path) -> list[str]:
    return [
        "run", *map(str, inputs), "--endpoint", server.url, "--state-dir", str(state),
        "--report", str(report), "--batch-size", "100", "--progress", "off",
        "--backoff-initial", "0.01",
    ]  # fmt: skip


def valid_and_invalid(tmp_path: Path, valid: int, every: int = 0) -> tuple[Path, list[bytes]]:
    """A log of `valid` valid records with a broken line after every `every`-th one."""
    good = [line(interaction(i)) for i in range(valid)]
    rows: list[bytes] = []
    for i, row in enumerate(good):
        rows.append(row)
        if every and i % every == every - 1:
            rows.append(b'{"broken": %d' % i)
    return write_lines(tmp_path / "a.jsonl", rows), good


class Load(NamedTuple):
    """A `backfill run` command line, the valid records of its input, where it keeps state."""

    args: list[str]
    good: list[bytes]
    state: Path
    report: Path


def a_load(tmp_path: Path, server: RunningServer, valid: int, every: int = 0) -> Load:
    path, good = valid_and_invalid(tmp_path, valid, every)
    state, report = tmp_path / "state", tmp_path / "report.json"
    return Load(run_args(server, state, report, path), good, state, report)


def report_of(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


# -- a rehearsal never stands in for the real load ---------------------------------------


async def test_a_rehearsal_then_the_real_load_sends_everything(
    tmp_path: Path, server: RunningServer
) -> None:
    args, good, state, report = a_load(tmp_path, server, 300, every=150)

    code, out, err = await backfill(*args, "--server-dry-run", key=server.secret_key)
    assert code == 0, err
    assert server.records("interactions") == []
    rehearsal = report_of(report)
    assert rehearsal["rehearsal"] is True and rehearsal["records_accepted"] == 300
    assert "stored nothing" in rehearsal["note"]
    assert "backfill completed (exit 0): a rehearsal, nothing was stored" in out
    assert len(dead_letters(state / "server-dry-run" / "dead-letter.jsonl")) == 2
    code, out, _ = await backfill("status", "--state-dir", str(state / "server-dry-run"))
    assert code == 0
    assert "rehearsal (--server-dry-run): the API checked the records and stored nothing" in out

    code, out, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    assert sorted(server.records("interactions")) == sorted(good)
    real = report_of(report)
    assert real["rehearsal"] is False and "note" not in real
    assert real["records_accepted"] == 300 and real["records_invalid"] == 2
    assert "nothing was stored" not in out
    assert [e["line"] for e in dead_letters(state / "dead-letter.jsonl")] == [151, 302]


# -- a lost checkpoint is never a silent fresh start --------------------------------------


def _truncate(db: Path) -> None:
    db.write_bytes(b"")


def _delete(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _drop(*tables: str) -> Any:
    def drop(db: Path) -> None:
        conn = sqlite3.connect(db)
        with conn:
            for table in tables:
                conn.execute(f"DROP TABLE {table}")
        conn.close()

    return drop


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_truncate, "is empty (0 bytes)"),
        (_delete, "is missing"),
        (_drop("meta", "files", "batches", "ambiguous", "legs"), "has no tables"),
        (_drop("batches"), "has lost tables (batches)"),
    ],
)
async def test_a_lost_checkpoint_is_refused_until_restart(
    tmp_path: Path, server: RunningServer, damage: Any, said: str
) -> None:
    args, good, state, report = a_load(tmp_path, server, 250, every=100)
    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    requests = (await server.stats())["requests"]["total"]

    damage(state / "checkpoint.sqlite")
    code, out, err = await backfill(*args, key=server.secret_key)
    assert code == 2, out + err
    assert said in err and "--restart --yes" in err and "earlier run (lock" in err
    assert (await server.stats())["requests"]["total"] == requests  # nothing sent again
    assert sorted(server.records("interactions")) == sorted(good)

    code, _, err = await backfill(*args, "--restart", "--yes", key=server.secret_key)
    assert code == 0, err
    assert sorted(server.records("interactions")) == sorted(good + good)  # on purpose
    assert report_of(report)["records_accepted"] == 250


async def test_a_restart_that_fails_to_start_leaves_a_fresh_state_dir(
    tmp_path: Path, server: RunningServer
) -> None:
    args, good, _, _ = a_load(tmp_path, server, 100)
    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    code, _, err = await backfill(*args, "--restart", "--yes", key="")  # no key: no run
    assert code == 2 and "no API key" in err
    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err  # a first run, not a lost checkpoint
    assert sorted(server.records("interactions")) == sorted(good + good)


async def test_a_new_or_empty_state_dir_is_a_fresh_start(
    tmp_path: Path, server: RunningServer
) -> None:
    path, good = valid_and_invalid(tmp_path, 10)
    state, report = tmp_path / "state", tmp_path / "report.json"
    state.mkdir()
    code, _, err = await backfill(*run_args(server, state, report, path), key=server.secret_key)
    assert code == 0, err
    assert sorted(server.records("interactions")) == sorted(good)


# -- `status` only reads ------------------------------------------------------------------


@contextlib.contextmanager
def mounted(at: Path, *how: str) -> Iterator[Path]:
    """`mount <how> <at>` for the duration (needs root); the test is skipped where the
    machine does not allow it."""
    done = subprocess.run(["mount", *how, str(at)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode().strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)


def remount(at: Path, options: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{options}", str(at)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount here: {done.stderr.decode().strip()}")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """The same directory, read-only: a read-only bind mount as root (root ignores modes),
    the directory's mode otherwise."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)
        return
    view = directory.with_name(directory.name + "-ro")
    view.mkdir()
    with mounted(view, "--bind", str(directory)):
        remount(view, "ro,bind")
        yield view


async def test_status_only_reads_and_explains_what_it_cannot_read(
    tmp_path: Path, server: RunningServer
) -> None:
    state = tmp_path / "state"
    code, out, err = await backfill("status", "--state-dir", str(state))
    assert (code, out) == (2, "") and f"no checkpoint in {state}" in err

    path, _ = valid_and_invalid(tmp_path, 150, every=50)
    args = run_args(server, state, tmp_path / "report.json", path)
    code, _, err = await backfill(*args, "--server-dry-run", key=server.secret_key)
    assert code == 0, err
    code, _, err = await backfill("status", "--state-dir", str(state))
    assert code == 2 and f"a rehearsal's checkpoint is in {state / 'server-dry-run'}" in err

    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    before = sorted(p.name for p in state.iterdir())
    code, out, err = await backfill("status", "--state-dir", str(state))
    assert code == 0, err
    assert "records accepted:   150" in out and "invalid (dead-lettered): 3" in out
    assert "load:               completed" in out and "last command:       backfill run" in out
    assert "to continue" not in out
    assert sorted(p.name for p in state.iterdir()) == before  # no -wal, no -shm

    with read_only(state) as view:
        code, out, err = await backfill("status", "--state-dir", str(view))
    assert code == 0, err
    assert "records accepted:   150" in out

    db = state / "checkpoint.sqlite"
    for damage, said in ((b"", "no such table"), (b"garbage " * 1000, "not a database")):
        db.write_bytes(damage)
        code, out, err = await backfill("status", "--state-dir", str(state))
        assert (code, out) == (2, ""), err
        assert said in err and "it is damaged, unreadable or not a checkpoint" in err
        assert "Traceback" not in err


# -- a full disk under the state dir ------------------------------------------------------


def check_delivered(server: RunningServer, good: list[bytes], report: dict[str, Any]) -> None:
    """Every valid record stored; any duplicate accounted for as possibly duplicated."""
    stored = server.records("interactions")
    assert set(stored) == set(good)
    assert len(stored) - len(good) <= report["possibly_duplicated"]
    assert report["records_accepted"] == len(good)


async def test_a_full_dead_letter_file_stops_cleanly_and_resumes_exactly(
    tmp_path: Path, server: RunningServer
) -> None:
    good = [line(interaction(i)) for i in range(1_000)]
    rows: list[bytes] = []
    for i, row in enumerate(good):
        rows.append(row)
        if i % 100 == 99:  # two 60 kB broken lines: 120 kB of dead letters per 100 records
            rows += [b'{"broken": "%d' % i + b"x" * 60_000] * 2
    path = write_lines(tmp_path / "a.jsonl", rows)
    state, report = tmp_path / "state", tmp_path / "report.json"
    args = [*run_args(server, state, report, path), "--concurrency", "1"]
    code, out, err = await backfill(*args, key=server.secret_key, max_file_bytes=400_000)
    assert code == 3, out + err
    assert "backfill stopped (exit 3)" in out and "to resume: backfill run" in out
    assert f"no space left for the dead-letter file {state / 'dead-letter.jsonl'}" in out
    assert "free space and rerun the same command" in out and "Traceback" not in err
    assert report_of(report)["status"] == "stopped"
    dead = state / "dead-letter.jsonl"
    assert dead.read_bytes().endswith(b"\n")
    broken = [n for g in range(1, 11) for n in (102 * g - 1, 102 * g)]  # 101, 102, 203, ...
    assert [e["line"] for e in dead_letters(dead)] == broken[:6]  # 3 x 120 kB fit, none torn

    code, out, err = await backfill(*args, key=server.secret_key)
    assert code == 0, out + err
    assert sorted(e["line"] for e in dead_letters(dead)) == broken  # each once
    check_delivered(server, good, report_of(report))


async def test_a_full_checkpoint_stops_cleanly_and_resumes_exactly(
    tmp_path: Path, server: RunningServer
) -> None:
    args, good, state, report = a_load(tmp_path, server, 3_000)
    args = [*args, "--concurrency", "2"]
    code, out, err = await backfill(*args, key=server.secret_key, max_file_bytes=300_000)
    assert code == 3, out + err
    assert f"cannot write the checkpoint in the state dir {state}" in out
    assert "to resume: backfill run" in out and "Traceback" not in err
    assert 0 < len(server.records("interactions")) < 3_000

    code, out, err = await backfill(*args, key=server.secret_key)
    assert code == 0, out + err
    check_delivered(server, good, report_of(report))


async def test_a_torn_last_dead_letter_is_cut_off_on_resume(
    tmp_path: Path, server: RunningServer
) -> None:
    """kill -9 in the middle of a dead-letter write leaves half an entry; its batch never
    reached the checkpoint, so the resume writes the entry again, whole."""
    args, good, state, _ = a_load(tmp_path, server, 300, every=100)
    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    dead = state / "dead-letter.jsonl"
    whole = dead.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    # the crash: the last entry's batch is not in the checkpoint, its entry half written
    dead.write_bytes(whole[: len(whole) - len(last) - 1] + last[:40])
    db = sqlite3.connect(state / "checkpoint.sqlite")
    with db:
        db.execute("DELETE FROM batches WHERE start_line <= 302 AND end_line > 302")
        db.execute("UPDATE legs SET exit_code = NULL")
    db.close()
    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    assert dead.read_bytes() == whole
    assert [e["line"] for e in dead_letters(dead)] == [101, 202, 303]
    assert set(server.records("interactions")) == set(good)


@contextlib.contextmanager
def small_disk(directory: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A real file system of `size` at `directory` (tmpfs), and a way to grow it."""
    directory.mkdir()
    with mounted(directory, "-t", "tmpfs", "-o", f"size={size}", "tmpfs"):
        yield lambda new_size: remount(directory, f"size={new_size}")


async def test_a_full_disk_stops_cleanly_and_resumes_once_space_is_freed(
    tmp_path: Path, server: RunningServer
) -> None:
    args, good, state, report = a_load(tmp_path, server, 5_000, every=500)
    with small_disk(state, "256k") as grow:
        code, out, err = await backfill(*args, key=server.secret_key)
        assert code == 3, out + err
        assert "no space left" in out and "to resume: backfill run" in out
        assert "Traceback" not in err
        assert len(server.records("interactions")) < 5_000
        grow("64m")
        code, out, err = await backfill(*args, key=server.secret_key)
        assert code == 0, out + err
        assert sorted(e["line"] for e in dead_letters(state / "dead-letter.jsonl")) == [
            501 * k for k in range(1, 11)
        ]
    check_delivered(server, good, report_of(report))


async def test_status_counts_a_file_done_only_when_every_batch_is_settled(
    tmp_path: Path, server: RunningServer
) -> None:
    """Batches are acknowledged out of order: a file whose last batch is acknowledged while
    an earlier one was in flight at the stop is not done."""
    args, _, state, _ = a_load(tmp_path, server, 300)
    code, _, err = await backfill(*args, key=server.secret_key)
    assert code == 0, err
    code, out, _ = await backfill("status", "--state-dir", str(state))
    assert "files:              1 done of 1 known" in out
    db = sqlite3.connect(state / "checkpoint.sqlite")
    with db:
        db.execute("UPDATE batches SET state='inflight' WHERE start_line=0")
    db.close()
    code, out, _ = await backfill("status", "--state-dir", str(state))
    assert code == 0
    assert "files:              0 done of 1 known" in out


def test_the_report_and_status_name_an_exit_code_alike() -> None:
    """One table (errors.run_status) for `run --report` and `status`: they never disagree."""
    codes = (0, 2, 3, 130, 143)
    words = ["completed", "stopped", "stopped", "interrupted", "interrupted"]
    assert [run_status(code) for code in codes] == words
    assert run_status(0, all_done=False) == "stopped"  # a clean leg that left files unread
    assert run_status(None) == "running or killed"
