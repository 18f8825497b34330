"""`backfill generate`: the subcommand, its flags, and the one-paragraph summary it prints."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date

from backfill.generate.model import DEFAULT_START, GenerateConfig, GenerateConfigError
from backfill.generate.run import generate

EXAMPLE = "example: backfill generate --out demo-data --days 90 --records 1000000 --seed 7"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `generate` to the main parser's subcommands; `args.func(args)` runs it."""
    p = sub.add_parser(
        "generate",
        help="write realistic synthetic interaction logs (and a catalog) for tests and benchmarks",
        description="Write one interaction file per day, products and users files, and "
        "manifest.json describing every file and every injected defect.",
        epilog=EXAMPLE,
    )
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--days", type=int, default=90, help="days of logs, one file each (default 90)")
    p.add_argument(
        "--records", type=int, default=100_000, help="interaction lines in all (default 100000)"
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument(
        "--format",
        choices=("jsonl", "jsonl.gz"),
        default="jsonl.gz",
        help="file format (default jsonl.gz)",
    )
    p.add_argument(
        "--bad-fraction",
        type=float,
        default=0.0,
        help="share of lines replaced by a tagged defect; also adds one empty file, one "
        "truncated last line and one cut gzip stream (default 0)",
    )
    p.add_argument(
        "--pii-rate",
        type=float,
        default=0.0,
        help="share of valid lines given an e-mail address, phone or card number, tagged in "
        "the manifest (default 0)",
    )
    p.add_argument(
        "--start",
        type=date.fromisoformat,
        default=DEFAULT_START,
        help=f"first day, YYYY-MM-DD (default {DEFAULT_START})",
    )
    p.add_argument("--products", type=int, help="catalog size (default: records/200)")
    p.add_argument("--users", type=int, help="registered users (default: records/25)")
    p.add_argument(
        "--no-catalog",
        dest="catalog",
        action="store_false",
        help="skip products and users files",
    )
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    """Run `backfill generate`; 0 on success, 2 for a setting or an output that cannot work."""
    try:
        config = GenerateConfig(
            out=args.out,
            days=args.days,
            records=args.records,
            seed=args.seed,
            format=args.format,
            bad_fraction=args.bad_fraction,
            pii_rate=args.pii_rate,
            start=args.start,
            products=args.products,
            users=args.users,
            catalog=args.catalog,
        )
    except GenerateConfigError as exc:
        print(f"backfill generate: {exc}", file=sys.stderr)
        return exc.exit_code
    began = time.perf_counter()
    try:
        summary = generate(config)
    except OSError as exc:  # a bad --out, a full disk: the user's to fix, no traceback
        print(f"backfill generate: cannot write to {config.out}: {exc}", file=sys.stderr)
        return GenerateConfigError.exit_code
    seconds = time.perf_counter() - began
    written = summary.records + summary.lost_records
    defects = sum(summary.defects.values())
    lost = f", {summary.lost_records:,} beyond a cut gzip stream" if summary.lost_records else ""
    if summary.pii:
        lost += f", {sum(summary.pii.values()):,} with personal data"
    print(
        f"wrote {len(summary.files)} files to {config.out}: {written:,} interactions "
        f"({summary.valid:,} valid, {defects:,} defects{lost}), {summary.products:,} products, "
        f"{summary.users:,} users; {summary.bytes / 1e6:.1f} MB in {seconds:.2f} s "
        f"({written / max(seconds, 1e-9):,.0f} records/s)"
    )
    return 0
