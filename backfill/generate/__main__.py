"""`python -m backfill.generate ...`: the subcommand on its own, before `backfill` is installed."""

import argparse
import sys

from backfill.generate.cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backfill.generate")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["generate", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
