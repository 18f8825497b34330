"""`python -m backfill.server serve ...`: the server's own commands without the full CLI."""

from __future__ import annotations

import argparse
import sys

from backfill.errors import BackfillError
from backfill.server.command import add_parsers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backfill.server")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BackfillError as exc:
        print(f"backfill {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
