"""Which inputs belong to shard I of N, when one load is cut across machines.

The owner of a source is a stable hash of its path below its input root (`Source.relative`),
never a position in a sorted list and never Python's salted `hash()`: adding files moves no
other file to another shard, and two pods that mount the inputs at different places agree
on every file. Each shard keeps its own checkpoint and dead letters under the common state
root (`shard-03-of-16/`), so N pods may be given one `--state-dir` (see the README, "Running
on many machines", for where that directory may live).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TypeVar

import msgspec

from backfill.errors import UsageError
from backfill.sources import Source

S = TypeVar("S", bound=Source)

# where schedulers put the index of this task, in the order they are looked at
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX", "SLURM_ARRAY_TASK_ID")


class Shard(msgspec.Struct, frozen=True):
    """Shard `index` (0-based) of `count`."""

    index: int
    count: int

    @property
    def dir_name(self) -> str:
        width = max(2, len(str(self.count - 1)))
        return f"shard-{self.index:0{width}d}-of-{self.count:0{width}d}"

    @property
    def nothing_to_do(self) -> str:
        return (
            f"shard {self.index}/{self.count}: no input file belongs to this shard; nothing to do"
        )


def shard_of(relative: str, count: int) -> int:
    digest = hashlib.sha256(relative.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % count


def owned_by(sources: list[S], shard: Shard | None) -> list[S]:
    """The sources this shard loads (all of them without sharding), in their given order."""
    if shard is None:
        return sources
    return [s for s in sources if shard_of(s.relative, shard.count) == shard.index]


def parse_shard(text: str, environ: Mapping[str, str]) -> Shard:
    """`I/N`, or `N` with I from the scheduler's environment. Called at the edge only."""
    head, sep, tail = text.partition("/")
    try:
        count = int(tail if sep else head)
        index = int(head) if sep else _index_from(environ)
    except ValueError:
        raise UsageError(f"--shard: expected I/N or N (e.g. 3/16 or 16), got {text!r}") from None
    if count < 1:
        raise UsageError(f"--shard: the number of shards must be at least 1, got {count}")
    if not 0 <= index < count:
        raise UsageError(
            f"--shard {text}: the shard index {index} is out of range: shards are numbered "
            f"0 to {count - 1}"
        )
    return Shard(index, count)


def _index_from(environ: Mapping[str, str]) -> int:
    for name in INDEX_VARIABLES:
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            index = int(value)
            if name == "SLURM_ARRAY_TASK_ID":
                index -= int(environ.get("SLURM_ARRAY_TASK_MIN", "0") or 0)
        except ValueError:
            raise UsageError(f"--shard: ${name} is not a number: {value!r}") from None
        return index
    raise UsageError(
        "--shard N needs this task's index from the scheduler, but none of "
        f"{', '.join('$' + n for n in INDEX_VARIABLES)} is set: give it as --shard I/N"
    )
