"""`backfill diff`: the ids the API holds against a local catalog, and the lists to act on.

Its output feeds `backfill delete`, so a delete list that looks like an accident (an empty or
wrong file, most of the catalog) is refused before anything is printed or written. Exit codes:
0 both sides hold the same ids, 1 they differ (like diff(1)), 2 usage or a refused list,
3 the API could not be asked.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import uvloop

from backfill.config import KEY_FILE_HELP, default_help, load_secret, load_settings
from backfill.errors import UsageError
from backfill.maintenance import Diff, LocalIds, accidental_deletes, diff, read_ids, remote_ids
from backfill.schema import Kind
from backfill.sources import LocalFile

SHOWN_PROBLEMS = 20  # lines that are not ids, named one by one before a count of the rest


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff",
        help="compare the ids the API holds with a local catalog",
        description="Compare the ids the API holds (GET /v1/KIND/_ids) with a local catalog "
        "or ids file. Exit 0 when both hold the same ids, 1 when they differ. Refuses (exit 2, "
        "nothing written) when the comparison looks like an accident: the local side holds no "
        "ids or another kind of records, or more than half of what the API holds would be "
        "proposed for deletion; --allow-mass-delete goes ahead anyway.",
    )
    p.add_argument("kind", choices=["products", "users"], help="which catalog to compare")
    p.add_argument(
        "--ids-from",
        required=True,
        help="local catalog (JSON lines with the id field) or ids, one per line; gzip or not",
    )
    p.add_argument("--endpoint", help=f"API base URL {default_help('endpoint')}")
    p.add_argument("--api-key-file", help=KEY_FILE_HELP)
    p.add_argument("--write-deletes", help="write the ids only the API holds to this file")
    p.add_argument("--write-missing", help="write the ids the API lacks to this file")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds for the whole GET (default 300)"
    )
    p.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="compare and write even when the delete list looks like an accident",
    )
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(compare(args))
    for text in result.lines(args.kind):
        print(text)
    for path, ids in (
        (args.write_deletes, result.only_remotely),
        (args.write_missing, result.missing_remotely),
    ):
        if path:
            Path(path).write_text("".join(f"{i}\n" for i in ids))
            print(f"wrote {len(ids):,} ids to {path}")
    return 1 if result.only_remotely or result.missing_remotely else 0


async def compare(args: argparse.Namespace) -> Diff:
    """Local file first: a wrong file is found before the key is needed or the API asked."""
    settings = load_settings(None, {"endpoint": args.endpoint, "api_key_file": args.api_key_file})
    local = await _read_local_ids(Path(args.ids_from), args.kind)
    _refuse_unless(args.allow_mass_delete, local.other_kind(args.kind))
    _print_problems(local.problems)
    secret = load_secret(settings)
    remote = await remote_ids(settings.endpoint, args.kind, secret, args.timeout)
    result = diff(local.ids, remote)
    _refuse_unless(args.allow_mass_delete, accidental_deletes(result, args.kind, local.path))
    return result


async def _read_local_ids(path: Path, kind: Kind) -> LocalIds:
    if not path.exists():
        raise UsageError(f"--ids-from {path}: no such file")
    if path.is_dir():
        raise UsageError(f"--ids-from {path}: is a directory; give one catalog or ids file")
    try:
        return await read_ids(LocalFile.at(path), kind)
    except OSError as exc:
        raise UsageError(f"cannot read --ids-from {path}: {exc.strerror or exc}") from None


def _refuse_unless(allowed: bool, reason: str | None) -> None:
    if reason is None:
        return
    if allowed:
        print(f"warning: {reason} (going ahead: --allow-mass-delete)", file=sys.stderr)
        return
    raise UsageError(
        f"refusing to propose deletions: {reason}. Nothing was written; check --ids-from, "
        "or add --allow-mass-delete if this is what you mean"
    )


def _print_problems(problems: list[str]) -> None:
    for problem in problems[:SHOWN_PROBLEMS]:
        print(f"not an id: {problem}", file=sys.stderr)
    if len(problems) > SHOWN_PROBLEMS:
        rest = len(problems) - SHOWN_PROBLEMS
        print(f"... and {rest:,} more lines that are not ids", file=sys.stderr)
