"""`backfill serve` and `backfill serve-stats`: flags in, one ServerConfig out.

Every Faults field is a `--fault-NAME` flag, generated from the Struct so the two never drift.
The secret key may come from MISO_API_KEY or a file instead of a flag (a flag shows up in `ps`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from backfill.errors import UsageError
from backfill.server.config import DEFAULT_DB, DEFAULT_PORT, Capacity, Faults, ServerConfig
from backfill.server.runner import serve_forever
from backfill.server.store import StoreError, read_stats

KEY_ENV = "MISO_API_KEY"

FAULT_HELP: dict[str, str] = {
    "latency": "delay before each answer: seconds ('0.1'), 'uniform:MIN:MAX' or 'exp:MEAN'",
    "error_rate": "share of requests answered 500, 502 or 503 (0-1)",
    "throttle_rate": "share of requests answered 429 with Retry-After (0-1)",
    "retry_after": "seconds sent in Retry-After on 429 answers (default 1)",
    "fail_first": "answer the first N requests with --fault-fail-status",
    "fail_status": "status of the fail-first answers (default 503; 429 gets Retry-After)",
    "max_body_bytes": "answer 413 to bodies larger than this (0 = unlimited)",
    "drop_rate": "share of requests whose connection is closed unanswered, nothing stored",
    "lost_answer_rate": "share of requests stored, then closed unanswered (a retry duplicates)",
    "stall_rate": "share of requests answered only after --fault-stall-seconds",
    "stall_seconds": "how long a stalled request waits (default 60)",
    "reject_user_id": "regex: interactions whose user_id matches are 422 schema errors",
    "task_reject_id": "regex: products/users whose id matches fail in their task status",
    "task_throttle_first": "answer the first N task-status polls 429 with --fault-retry-after",
    "seed": "seed of the fault dice, to replay a run",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser(
        "serve",
        help="run a local Miso-compatible server to rehearse a load",
        description="Run a local server that speaks the Miso Data API, stores what it "
        "accepts and misbehaves on demand. /_admin/* (stats, records, faults, reset) needs "
        "no key: keep the default loopback --host.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"0 picks a free port (default {DEFAULT_PORT})",
    )
    serve.add_argument(
        "--store",
        choices=("sqlite", "memory", "null"),
        default="sqlite",
        help="sqlite: a file kept after a stop; memory: for tests; null: counts only, for "
        "benchmarks (default sqlite)",
    )
    serve.add_argument("--db", default=None, help=f"SQLite file (default {DEFAULT_DB})")
    serve.add_argument("--no-validate", action="store_true", help="skip schema checks (benchmarks)")
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument(
        "--secret-key-file",
        default=None,
        help=f"read the secret API key from this file's first line (default ${KEY_ENV}, "
        "else generated)",
    )
    keys.add_argument(
        "--secret-key",
        default=None,
        help="the secret API key itself; visible to every user in `ps`: prefer "
        f"${KEY_ENV} or --secret-key-file",
    )
    serve.add_argument(
        "--publishable-key", default=None, help="the browser key (default: generated)"
    )
    _add_capacity_flags(serve)
    faults = serve.add_argument_group("fault injection (all off by default)")
    for name in msgspec.structs.fields(Faults):
        faults.add_argument(
            f"--fault-{name.name.replace('_', '-')}",
            dest=f"fault_{name.name}",
            default=None,
            metavar="VALUE",
            help=FAULT_HELP.get(name.name),
        )
    serve.set_defaults(func=run_serve)

    stats = sub.add_parser(
        "serve-stats",
        help="print the stats of a `backfill serve` SQLite file as JSON",
        description="Print the counts of a stopped (or running) `backfill serve` SQLite "
        "database as JSON: what was stored, by kind and type, and exact duplicates.",
    )
    stats.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default {DEFAULT_DB})")
    stats.set_defaults(func=run_serve_stats)


def _add_capacity_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "capacity model (service time: --fault-latency; change live: POST /_admin/capacity)"
    )
    group.add_argument(
        "--capacity",
        type=int,
        default=0,
        metavar="N",
        help="serve at most N requests at once (default 0: no limit)",
    )
    group.add_argument(
        "--over-capacity",
        choices=("reject", "queue"),
        default="reject",
        help="beyond N: answer 429 with Retry-After, or queue (latency grows) (default reject)",
    )
    group.add_argument(
        "--capacity-retry-after",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="Retry-After of the capacity 429s (default 1)",
    )


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> ServerConfig:
    """Raises UsageError naming the flag that is wrong."""
    fault_values: dict[str, Any] = {
        field.name: getattr(args, f"fault_{field.name}")
        for field in msgspec.structs.fields(Faults)
        if getattr(args, f"fault_{field.name}") is not None
    }
    try:
        faults = msgspec.convert(fault_values, Faults, strict=False)
    except msgspec.ValidationError as exc:
        raise UsageError(f"--fault-* flags: {exc}") from None
    try:
        return ServerConfig(
            host=args.host,
            port=args.port,
            store=args.store,
            db=args.db,
            secret_key=_secret_key(args, environ),
            publishable_key=args.publishable_key,
            validate=not args.no_validate,
            faults=faults,
            capacity=Capacity(
                limit=args.capacity,
                over_capacity=args.over_capacity,
                retry_after=args.capacity_retry_after,
            ),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _secret_key(args: argparse.Namespace, environ: dict[str, str]) -> str | None:
    """The flag, else the file's first line, else the environment; None: generate one."""
    if args.secret_key:
        return str(args.secret_key)
    if args.secret_key_file is not None:
        try:
            lines = Path(args.secret_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            raise UsageError(
                f"cannot read a key from --secret-key-file {args.secret_key_file}"
            ) from None
        if not lines or not lines[0].strip():
            raise UsageError(f"--secret-key-file {args.secret_key_file}: the first line is empty")
        return lines[0].strip()
    return environ.get(KEY_ENV) or None


def run_serve(args: argparse.Namespace) -> int:
    return serve_forever(config_from_args(args, dict(os.environ)))


def run_serve_stats(args: argparse.Namespace) -> int:
    try:
        stats = read_stats(args.db)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    json.dump(stats, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
