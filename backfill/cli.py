"""The `backfill` command line: argv -> typed Settings -> engine; errors -> exit codes.

Exit codes: 0 done; 2 usage or configuration error; 3 stopped on an error that needs the
user (auth, retries exhausted, too many invalid records), resumable; 130/143 interrupted by
SIGINT/SIGTERM, resumable; 141 the reader of stdout left early (`| head`), quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import msgspec
import uvloop

from backfill import __version__, allocator
from backfill.config import KEY_FILE_HELP, Settings, default_help, load_secret, load_settings
from backfill.engine import Engine
from backfill.errors import EXIT_NEEDS_USER, EXIT_SIGINT, EXIT_SIGTERM, BackfillError, UsageError
from backfill.maintenance import read_ids
from backfill.parallel import ParallelEngine
from backfill.privacy import HASHED_IDS_NOTE, hashes_deleted_ids, ids_to_delete
from backfill.progress import render_report, write_report
from backfill.shards import Shard, parse_shard
from backfill.sources import LocalFile
from backfill.state import REHEARSAL_DIRS, reset_state, status_text

# 128 + SIGPIPE, what a shell reports for a writer killed by SIGPIPE (`... | head`):
# the output was cut short by its reader, which is not a failure of the command itself
EXIT_BROKEN_PIPE: Final = 141


def _flag(group: argparse._ActionsContainer, name: str, help: str) -> None:
    """A switch that stays None when absent, so a TOML value is not overridden."""
    group.add_argument(name, action="store_const", const=True, default=None, help=help)


def _when(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 date-time such as 2026-06-01T00:00:00Z, got {text!r}"
        ) from None


def _setting(group: argparse._ActionsContainer, flag: str, text: str, **kwargs: Any) -> None:
    """An option for a Settings field: None when absent (a TOML value stands), and a help
    that states the field's own default, so the two never drift."""
    name = flag.removeprefix("--").replace("-", "_")
    group.add_argument(flag, help=f"{text} {default_help(name)}", **kwargs)


def _sending_args(g: argparse._ArgumentGroup) -> None:
    """Flags shared by every command that sends batches (run, delete)."""
    _setting(g, "--endpoint", "API base URL")
    _setting(g, "--batch-size", "records per request", type=int)
    _setting(
        g,
        "--concurrency",
        "requests in flight, or auto (adapts)",
        type=_concurrency,
        metavar="N|auto",
    )
    _setting(g, "--request-timeout", "seconds for a whole request", type=float)
    _setting(g, "--connect-timeout", "seconds to connect", type=float)
    _flag(g, "--key-in-query", help="send the key as ?api_key= instead of X-API-KEY")
    g.add_argument("--api-key-file", help=KEY_FILE_HELP)
    _setting(g, "--max-attempts", "attempts per request", type=int)
    _setting(g, "--max-retry-seconds", "time budget of one request's retries", type=float)
    _setting(g, "--backoff-initial", "first backoff ceiling, seconds", type=float)
    _setting(g, "--backoff-max", "largest backoff ceiling, seconds", type=float)
    _setting(g, "--drain-timeout", "seconds to finish requests on a signal", type=float)
    _setting(
        g, "--max-rejected-ratio", "stop once the server refuses more than this share", type=float
    )
    _setting(
        g,
        "--progress",
        "auto: a bar on a terminal, log lines otherwise",
        choices=["auto", "bar", "log", "off"],
    )
    _setting(g, "--progress-interval", "seconds between progress updates", type=float)
    _limit_args(g)


def _concurrency(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, not {text!r}") from None


def _limit_args(g: argparse._ArgumentGroup) -> None:
    """Adaptive concurrency, rate caps and metrics (issue 15)."""
    _setting(g, "--max-concurrency", "--concurrency auto never goes above", type=int)
    _setting(g, "--initial-concurrency", "--concurrency auto starts at", type=int)
    _setting(g, "--max-records-per-second", "cap for the whole command", type=float)
    _setting(g, "--max-requests-per-second", "cap for the whole command", type=float)
    _setting(g, "--metrics-port", "serve Prometheus /metrics on 127.0.0.1 (0: any)", type=int)
    _setting(g, "--metrics-textfile", "write Prometheus metrics here every 15 s and at exit")


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="load interaction (or product/user) logs into the Miso API",
        description="Load log files into the Miso API; rerun the same command to resume.",
    )
    p.add_argument("inputs", nargs="*", help="files, directories or globs (sorted path order)")
    p.add_argument("--config", help="TOML file with the same settings; flags override it")
    _setting(p, "--kind", "what the inputs hold", choices=["interactions", "products", "users"])
    _setting(p, "--state-dir", "checkpoint, dead letters and lock")
    _setting(p, "--dead-letter", "dead-letter file")
    p.add_argument("--report", help="also write the final report as JSON to this file")
    _flag(p, "--wait-tasks", help="products/users: read each upload's task status for errors")
    _sending_args(p.add_argument_group("batching and sending"))
    _more_sending_args(p.add_argument_group("more sending"))
    v = p.add_argument_group("validation")
    _flag(v, "--allow-missing-timestamp", help="accept records without a timestamp")
    _flag(v, "--allow-anonymous", help="accept records without user_id/anonymous_id")
    v.add_argument("--since", type=_when, help="skip records before this time (inclusive)")
    v.add_argument("--until", type=_when, help="skip records from this time on (exclusive)")
    window = Settings().invalid_ratio_window
    _setting(
        v,
        "--max-invalid-ratio",
        f"stop if a larger share of the first {window:,} records is invalid",
        type=float,
    )
    r = p.add_argument_group("resume and shutdown")
    _setting(r, "--ambiguous", "batches in flight at a crash", choices=["resend", "skip"])
    _flag(r, "--restart", help="discard the checkpoint and start over")
    _flag(r, "--yes", help="do not ask for confirmation")
    _flag(r, "--force", help="resume even though an input file changed")
    _scale_args(p.add_argument_group("scale out"))
    _follow_args(p.add_argument_group("follow (load the history, then keep loading)"))
    p.set_defaults(func=cmd_run)


def _follow_args(g: argparse._ArgumentGroup) -> None:
    _flag(
        g,
        "--follow",
        help="after the inputs present, keep loading what is appended to them and new "
        "files, until SIGINT/SIGTERM",
    )
    seconds: dict[str, Any] = {"type": float, "metavar": "SECONDS"}
    _setting(g, "--linger", "--follow: how long a partial batch waits for more", **seconds)
    _setting(g, "--poll-interval", "--follow: time between looks for new data", **seconds)
    _setting(g, "--idle-timeout", "--follow: time without growth before a file is done", **seconds)


def _more_sending_args(g: argparse._ArgumentGroup) -> None:
    _setting(g, "--max-batch-bytes", "bytes per request body", type=int)
    _setting(g, "--max-line-bytes", "longer input lines are dead-lettered", type=int)
    _flag(g, "--server-dry-run", help="send dry_run=1: the API validates, stores nothing")
    _flag(g, "--dry-run", help="read, validate and batch, but send nothing")


def _scale_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--shard",
        metavar="I/N|N",
        help="load only shard I (0-based) of N; with N alone, I comes from "
        "$JOB_COMPLETION_INDEX, $AWS_BATCH_JOB_ARRAY_INDEX or $SLURM_ARRAY_TASK_ID; "
        "its checkpoint is <state-dir>/shard-I-of-N",
    )
    g.add_argument(
        "--processes",
        type=_processes,
        metavar="N|auto",
        help="worker processes on this machine; auto: one per usable core; --concurrency "
        f"is the total for all of them {default_help('processes')}",
    )


def _processes(text: str) -> int:
    if text == "auto":
        usable = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core
        return len(usable(0)) if usable else os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _in_shard(settings: Settings, shard: Shard) -> Settings:
    """A shard's checkpoint and dead letters live in its own subdir of the state root."""
    dead_letter = settings.dead_letter
    if dead_letter is not None:
        path = Path(dead_letter)
        dead_letter = str(path.with_name(f"{path.stem}.{shard.dir_name}{path.suffix}"))
    return msgspec.structs.replace(
        settings,
        state_dir=str(Path(settings.state_dir) / shard.dir_name),
        dead_letter=dead_letter,
    )


RUN_ONLY = {"config", "func", "command", "verbose", "argv"}
DELETE_ONLY = RUN_ONLY | {"ids", "yes"}


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k not in RUN_ONLY}
    if overrides.get("shard") is not None:  # the scheduler's environment is read here only
        shard = parse_shard(overrides["shard"], os.environ)
        overrides["shard"] = {"index": shard.index, "count": shard.count}
    if not overrides.get("inputs"):
        overrides.pop("inputs", None)
    return load_settings(args.config, overrides)


def resume_command(argv: Sequence[str]) -> str:
    kept = [a for a in argv if a not in ("--restart", "--yes")]
    return shlex.join(["backfill", *kept])


def cmd_run(args: argparse.Namespace) -> int:
    allocator.tune()  # a third less system time (backfill.allocator)
    settings = settings_from_args(args)
    if not settings.inputs:
        raise UsageError("no inputs: give files, directories or globs (or `inputs` in --config)")
    if settings.shard is not None:
        settings = _in_shard(settings, settings.shard)
    if settings.dry_run:  # its own checkpoint, started afresh every time
        settings = _in_subdir(settings, REHEARSAL_DIRS["dry-run"])
        reset_state(settings)
    elif settings.server_dry_run:  # never shares acknowledgements with a real load
        settings = _in_subdir(settings, REHEARSAL_DIRS["server-dry-run"])
    if settings.restart and not settings.dry_run:
        _confirm_restart(settings)
        reset_state(settings)
    secret = load_secret(settings)
    if settings.processes > 1:
        engine: Engine = ParallelEngine(settings, secret, command=resume_command(args.argv))
    else:
        engine = Engine(settings, secret, command=resume_command(args.argv))
    return _finish(settings, _run_async(engine.run()))


def _in_subdir(settings: Settings, name: str) -> Settings:
    return msgspec.structs.replace(settings, state_dir=str(Path(settings.state_dir) / name))


def _confirm_restart(settings: Settings) -> None:
    if not settings.yes:
        _confirm(f"discard the checkpoint in {settings.state_dir} and start over?", "--yes")


def _run_async(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def add_delete_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "delete",
        help="delete products or users by id, or a user's interactions (resumable)",
        description="Delete in batches through the API; checkpointed and resumable like a load.",
    )
    p.add_argument(
        "kind",
        choices=["products", "users", "interactions"],
        help="what to delete; interactions: every interaction of the users listed",
    )
    p.add_argument(
        "--ids", "--user-ids", dest="ids", required=True, help="ids, one per line or JSON lines"
    )
    p.add_argument("--config", help="TOML file with endpoint and other settings")
    p.add_argument(
        "--state-dir",
        help=f"checkpoint of the deletes (default {Settings().state_dir}/delete-KIND)",
    )
    p.add_argument("--report", help="also write the final report as JSON to this file")
    _flag(p, "--dry-run", help="list what would be deleted; delete nothing")
    _flag(p, "--yes", help="do not ask for confirmation")
    _sending_args(p.add_argument_group("batching and sending"))
    p.set_defaults(func=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    dry_run = bool(args.dry_run)
    overrides = {k: v for k, v in vars(args).items() if k not in DELETE_ONLY}
    overrides.update(kind=args.kind, operation="delete", inputs=[args.ids], dry_run=None)
    settings = load_settings(args.config, overrides)
    if args.state_dir is None:
        settings = _in_subdir(settings, f"delete-{args.kind}")
    # raw user ids the [privacy] table hashes are personal data: reasons do not quote them
    hidden = hashes_deleted_ids(settings.privacy, args.kind)
    local = _run_async(read_ids(LocalFile.at(args.ids), args.kind, show_values=not hidden))
    ids = local.ids
    for problem in local.problems:
        print(f"not an id: {problem}", file=sys.stderr)
    what = "user ids (all their interactions)" if args.kind == "interactions" else args.kind
    if dry_run:  # with [privacy] hash_ids, the pseudonyms the delete sends, never raw ids
        shown, hashed = ids_to_delete(settings.privacy, args.kind, ids)
        for value in shown:
            print(value)
        print(f"would delete {len(ids):,} {what} from {settings.endpoint}", file=sys.stderr)
        if hashed:
            print(HASHED_IDS_NOTE, file=sys.stderr)
        return 0
    if not args.yes:
        _confirm(f"delete {len(ids):,} {what} from {settings.endpoint}?", "--yes")
    secret = load_secret(settings)
    engine = Engine(settings, secret, command=resume_command(args.argv))
    return _finish(settings, _run_async(engine.run()))


def _confirm(question: str, flag: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(f"refusing without confirmation: add {flag}")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise UsageError("cancelled")


def _finish(settings: Settings, report: dict[str, Any]) -> int:
    print(render_report(report))
    code = int(report["exit_code"])
    if settings.report:
        try:
            write_report(settings.report, report)
        except OSError as exc:  # the table above is the report; the run itself is recorded
            print(
                f"backfill: cannot write the report to {settings.report}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return code or EXIT_NEEDS_USER
    return code


def add_status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="what a checkpoint holds, and how to continue",
        description="Print what the checkpoint of a state dir holds: files done and partly "
        "done, records acknowledged, and the command that continues the load; for a state root "
        "shared by shards (--shard), each shard's checkpoint and the total. Reads only.",
    )
    p.add_argument(
        "--state-dir",
        default=Settings().state_dir,
        help=f"the state dir of the run {default_help('state_dir')}",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print it as JSON with the report's keys; a state root's shards under `shards`",
    )
    p.set_defaults(func=lambda args: _print(status_text(Path(args.state_dir), args.json)))


def _print(text: str) -> int:
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backfill",
        description="Resumable, high-throughput historical backfill for the Miso Data API.",
        epilog="exit codes: 0 done, 2 usage error, 3 stopped (needs you; resumable), "
        "130/143 interrupted (resumable), 141 the reader of the output left (| head)",
    )
    parser.add_argument("--version", action="version", version=f"backfill {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log retries and details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    add_status_parser(sub)
    add_delete_parser(sub)
    for register in _feature_parsers():
        register(sub)
    return parser


def _feature_parsers() -> list[Any]:
    """Subcommands owned by their feature modules (server, generator, ...)."""
    registers: list[Any] = []
    from backfill.reconcile import add_parser as add_diff_parser

    registers.append(add_diff_parser)
    from backfill.server.command import add_parsers as add_server_parsers

    registers.append(add_server_parsers)
    from backfill.generate import add_parser as add_generate_parser

    registers.append(add_generate_parser)
    from backfill.preview import add_parser as add_preview_parser

    registers.append(add_preview_parser)
    from backfill.bench import add_parser as add_bench_parser

    registers.append(add_bench_parser)
    return registers


def main(argv: Sequence[str] | None = None) -> int:
    code, reader_left = EXIT_BROKEN_PIPE, False
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
    except* BrokenPipeError:
        reader_left = True
    if reader_left:
        _quiet_after_broken_pipe()
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        sys.stdout.flush()  # --help, --version: a reader gone early must show here
        raise
    args.argv = argv
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _terminated)  # until a command installs its own handling
    code = _dispatch(args)
    sys.stdout.flush()  # a reader gone early shows here, not as noise at interpreter exit
    return code


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except Terminated:
        print("backfill: terminated", file=sys.stderr)
        return EXIT_SIGTERM
    except BackfillError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("backfill: interrupted", file=sys.stderr)
        return EXIT_SIGINT


def _quiet_after_broken_pipe() -> None:
    """The reader of stdout or stderr left (`| head`): what is still buffered goes nowhere.

    Python's "Note on SIGPIPE": without this, flushing at exit fails again, prints
    "Exception ignored ... BrokenPipeError" and turns the exit code into 120.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


class Terminated(BaseException):
    """SIGTERM outside a run's own handling (start-up, prompts): leave like Ctrl-C does."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
