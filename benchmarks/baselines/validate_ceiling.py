"""Ceiling 2: read, decompress and validate every record with msgspec; send nothing.

Decompression is the engine's own inflater (benchmarks.data.inflate: ISA-L where installed,
as in the engine), so a faster inflater lowers this floor as much as the engine's cost.

The validator is the engine's own (`RecordValidator.check`: the msgspec Structs of the
contract plus the backfill rules), run in the tightest loop Python allows. The engine does
all of this and more (batching, checkpoint, HTTP), so its throughput over this one is the
share of its time it spends on anything but the unavoidable work.
`python -m benchmarks.baselines.validate_ceiling FILE...`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from backfill import allocator
from backfill.schema import RecordValidator, Rules
from benchmarks.data import inflate


def main(argv: list[str]) -> int:
    allocator.tune()  # as the engine's: the same unavoidable work, done as cheaply
    check = RecordValidator("interactions", Rules()).check
    records = valid = size = 0
    carry = b""
    for name in argv:
        for piece in inflate(Path(name)):
            size += len(piece)
            lines = (carry + piece).split(b"\n")
            carry = lines.pop()
            records += len(lines)
            for line in lines:
                if check(line) is None:
                    valid += 1
        if carry:
            records += 1
            valid += check(carry) is None
            carry = b""
    print(json.dumps({"records": records, "bytes": size, "valid": valid}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
