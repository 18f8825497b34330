"""The command line as a user meets it: pipes, help, and the defaults it states."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from backfill.cli import build_parser, main
from backfill.config import Settings
from backfill.server import RunningServer
from backfill.server.command import config_from_args
from tests.helpers import interaction, line, write_lines

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BROKEN_PIPE = 141
NOISE = ("Traceback", "BrokenPipeError", "Exception ignored")


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone: every write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def backfill_into_closed_pipe(
    *args: str, key: str = "k", broken: str = "stdout"
) -> tuple[int, str]:
    """`python -m backfill ARGS` whose stdout (or stderr) reader has left; (exit code, stderr)."""
    write_end = closed_pipe()
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, broken: write_end}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "backfill", *args],
            **streams,
            env=user_env(key),
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    return proc.returncode, (proc.stderr or b"").decode()


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


def subcommands() -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def shown(value: object) -> str:
    """How a default reads in help: 60.0 as 60, a date as 2026-06-01."""
    return f"{value:g}" if isinstance(value, float) else str(value)


# sweeps of `bench` default to lists of their own, not to the one value a run uses
OWN_DEFAULTS = {("bench", "concurrency"), ("bench", "batch_size")}
SETTINGS_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(Settings)}


def test_every_subcommand_has_a_description() -> None:
    commands = subcommands()
    assert {"run", "status", "delete", "diff", "serve", "serve-stats", "generate"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description, f"`backfill {name} --help` has no description"
        shown_help = " ".join(parser.format_help().split())
        assert " ".join(parser.description.split()) in shown_help


def test_every_option_has_help_and_states_its_default() -> None:
    for command, parser in subcommands().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"backfill {command} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where}: no help text"
            if action.nargs == 0 or not action.option_strings:
                continue  # a switch is off unless given; a positional has no default
            default = action.default
            if default is None and (command, action.dest) not in OWN_DEFAULTS:
                default = SETTINGS_DEFAULTS.get(action.dest)  # layered over a config file
            if default is None or default is msgspec.NODEFAULT:
                continue
            assert "(default " in action.help, f"{where}: default {default!r} not stated"
            assert shown(default) in action.help, f"{where}: says {action.help!r}, not {default!r}"


def test_options_without_a_settings_value_still_say_what_they_default_to() -> None:
    run = subcommands()["run"]
    helps = {a.dest: a.help or "" for a in run._actions}
    assert "(default 10000; 100 for products, users and deletes)" in helps["batch_size"]
    assert "(default <state-dir>/dead-letter.jsonl)" in helps["dead_letter"]
    assert "(default 5242880 = 5 MiB)" in helps["max_batch_bytes"]


def test_serve_reads_its_secret_key_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "serve.key"
    key_file.write_text("from-file\nignored\n")
    args = build_parser().parse_args(["serve", "--secret-key-file", str(key_file)])
    config = config_from_args(args, {"MISO_API_KEY": "from-env"})
    assert config.secret_key == "from-file" and "from-file" not in repr(config)
    both = ["serve", "--secret-key-file", str(key_file), "--secret-key", "x"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(both)  # one source of the key, not two


@pytest.mark.parametrize("content", [None, "\n"], ids=["missing", "empty"])
def test_serve_refuses_a_key_file_it_cannot_use(tmp_path: Path, content: str | None) -> None:
    key_file = tmp_path / "serve.key"
    if content is not None:
        key_file.write_text(content)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "backfill",
            "serve",
            "--port",
            "0",
            "--secret-key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    expected = "cannot read a key from" if content is None else "the first line is empty"
    assert "backfill: error: " in proc.stderr and expected in proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stdout


def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISO_API_KEY", raising=False)
    assert main(["run", "x.jsonl", "--state-dir", str(tmp_path)]) == 2
    assert "no API key" in capsys.readouterr().err
    monkeypatch.setenv("MISO_API_KEY", "k")
    assert main(["run", str(tmp_path / "missing.jsonl"), "--state-dir", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--concurrency", "lots"])
    assert exc.value.code == 2


def test_an_unreadable_input_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISO_API_KEY", "k")
    # /proc/self/mem is a file that every read refuses with EIO, even for root
    code = main(
        ["run", "/proc/self/mem", "--state-dir", str(tmp_path), "--endpoint", "http://127.0.0.1:9"]
    )
    assert code == 2
    assert "cannot read input /proc/self/mem: Input/output error" in capsys.readouterr().err


def test_restart_needs_confirmation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISO_API_KEY", "k")
    log = tmp_path / "a.jsonl"
    log.write_text("")
    state = str(tmp_path / "state")
    code = main(
        ["run", str(log), "--state-dir", state, "--restart", "--endpoint", "http://127.0.0.1:9"]
    )
    assert code == 2 and "add --yes" in capsys.readouterr().err  # no terminal to ask on


def test_a_run_whose_stderr_reader_left_exits_quietly(tmp_path: Path) -> None:
    """`backfill run ... 2>&1 | head -1`: here a warning on stderr is what breaks."""
    (tmp_path / "logs").mkdir()
    write_lines(tmp_path / "logs" / "a.jsonl", [line(interaction(i)) for i in range(50)])
    (tmp_path / "logs" / "empty.jsonl").write_bytes(b"")  # always warned about
    args = ("run", str(tmp_path / "logs"), "--dry-run", "--progress", "off")
    args += ("--state-dir", str(tmp_path / "state"))
    code, _ = backfill_into_closed_pipe(*args, broken="stderr")
    assert code == BROKEN_PIPE
