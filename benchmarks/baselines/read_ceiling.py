"""Ceiling 1: read and decompress the files, count lines, parse nothing.

No loader can beat this on one core: it is the cost of getting the bytes off disk and out of
gzip, with the engine's own inflater (benchmarks.data.inflate).
`python -m benchmarks.baselines.read_ceiling FILE...`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backfill import allocator
from benchmarks.data import inflate


def main(argv: list[str]) -> int:
    allocator.tune()  # as the engine's: the same unavoidable work, done as cheaply
    records = size = 0
    for name in argv:
        for piece in inflate(Path(name)):
            size += len(piece)
            records += piece.count(b"\n")
    print(json.dumps({"records": records, "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
