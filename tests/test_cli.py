"""The command line as a user meets it: pipes, help, and the defaults it states."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backfill.server import RunningServer
from tests.helpers import interaction, line, write_lines

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BROKEN_PIPE = 141
NOISE = ("Traceback", "BrokenPipeError", "Exception ignored")


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def backfill_into_closed_pipe(*args: str, key: str = "k") -> tuple[int, str]:
    """`python -m backfill ARGS` whose stdout reader has left; (exit code, stderr)."""
    write_end = closed_pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "backfill", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=user_env(key),
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr.decode()


def user_env(key: str) -> dict[str, str]:
    """A user's environment: stdout block-buffered into a pipe (the default), whatever ours is."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    return {**env, "MISO_API_KEY": key}


def assert_quiet(code: int, err: str) -> None:
    assert code == BROKEN_PIPE, err
    for noise in NOISE:
        assert noise not in err, err


def ids_file(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"p{i}\n" for i in range(count)))
    return path


def test_a_reader_that_leaves_early_is_not_an_error(tmp_path: Path) -> None:
    """`backfill delete --dry-run | head -1`, as typed: bash's pipefail shows our exit code."""
    ids = ids_file(tmp_path, 100_000)  # far more than a pipe holds: writes block, then fail
    command = f"set -o pipefail; {sys.executable} -m backfill delete products --ids {ids} "
    command += "--dry-run | head -1"
    proc = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        timeout=120,
        check=False,
        text=True,
        env=user_env("k"),
    )
    assert proc.stdout == "p0\n"
    assert_quiet(proc.returncode, proc.stderr)


SAMPLE_CSV = (
    str(CONFIGS / "mapping-ecommerce-csv.toml"),
    str(CONFIGS / "samples/ecommerce-events.csv"),
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["--version"],
        ["preview", "--config", SAMPLE_CSV[0], SAMPLE_CSV[1]],
        ["bench", "--dry-run", "--config", SAMPLE_CSV[0], SAMPLE_CSV[1]],
    ],
    ids=lambda args: " ".join(a for a in args if not a.startswith("/")),
)
def test_every_command_exits_quietly_when_its_reader_is_gone(args: list[str]) -> None:
    assert_quiet(*backfill_into_closed_pipe(*args))


def test_file_commands_exit_quietly_when_their_reader_is_gone(tmp_path: Path) -> None:
    log = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(50)])
    state = str(tmp_path / "state")
    assert_quiet(*backfill_into_closed_pipe("run", str(log), "--dry-run", "--state-dir", state))
    ids = ids_file(tmp_path, 10)
    assert_quiet(*backfill_into_closed_pipe("delete", "products", "--ids", str(ids), "--dry-run"))
    out = str(tmp_path / "generated")
    args = ("generate", "--out", out, "--days", "1", "--records", "100")
    assert_quiet(*backfill_into_closed_pipe(*args))


async def test_server_commands_exit_quietly_when_their_reader_is_gone(
    tmp_path: Path, server: RunningServer
) -> None:
    catalog = write_lines(tmp_path / "c.jsonl", [line({"product_id": f"p{i}"}) for i in range(5)])
    state = str(tmp_path / "state")
    key = server.secret_key
    run = ("run", str(catalog), "--kind", "products", "--endpoint", server.url)
    run += ("--state-dir", state, "--progress", "off")
    assert_quiet(*await asyncio.to_thread(backfill_into_closed_pipe, *run, key=key))
    assert len(server.records("products")) == 5  # the load itself went through
    status = ("status", "--state-dir", state)
    assert_quiet(*await asyncio.to_thread(backfill_into_closed_pipe, *status, key=key))
    diff = ("diff", "products", "--ids-from", str(catalog), "--endpoint", server.url)
    code, err = await asyncio.to_thread(backfill_into_closed_pipe, *diff, key=key)
    assert_quiet(code, err)
