"""A writer process for the --follow tests and bench: appends records as a site's logs do.

    python -m tests.follow_writer PLAN.json

PLAN is a list of steps {"path", "first", "count", "split", "pause"}: append records
`first` .. `first + count - 1` (tests.helpers.interaction) to `path` in one burst; with
`split`, the burst is written in two writes cut in the middle of a line, `pause` seconds
apart, so a follower may see the half line; then sleep `pause`. A file is created by its
first step. Each write is one os.write on an O_APPEND descriptor, as loggers do.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tests.helpers import interaction, line


def burst(path: str, first: int, count: int, split: bool, pause: float) -> None:
    data = b"".join(line(interaction(n)) + b"\n" for n in range(first, first + count))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if split:
            cut = len(data) - len(line(interaction(first + count - 1))) // 2 - 1
            os.write(fd, data[:cut])
            time.sleep(pause)
            os.write(fd, data[cut:])
        else:
            os.write(fd, data)
    finally:
        os.close(fd)


def main(plan_path: str) -> int:
    with open(plan_path) as fh:
        plan = json.load(fh)
    for step in plan:
        burst(step["path"], step["first"], step["count"], step.get("split", False),
              step.get("pause", 0.0))  # fmt: skip
        time.sleep(step.get("pause", 0.0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
