"""The engine's own parts run alone, one more part per stage, to tell where its CPU goes.

    python -m benchmarks.baselines.stages STAGE FILE...

Every stage imports what `backfill run` imports (so start-up costs the same in each) and
then does a prefix of the engine's work with the engine's own code:
  imports     nothing more: interpreter start-up and imports
  inflate     + the engine's inflater over every file, synchronously
  read        + the engine's reader instead (inflation on a worker thread, lines in blocks)
  validate    + RecordValidator.check on every line
  batch       + BatchBuilder (validation and batching) and each batch's body built
  checkpoint  + every batch marked in flight, then acknowledged, in a fresh checkpoint
Differences between consecutive stages (benchmarks.breakdown) are each part's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import uvloop

import backfill.cli  # noqa: F401  (start-up as `backfill run`'s)
from backfill import allocator
from backfill.batching import Batch, BatchBuilder
from backfill.checkpoint import Checkpoint, Outcome
from backfill.schema import RecordValidator, Rules
from backfill.sources import START, open_blocks
from backfill.sources.local import LocalFile
from backfill.sources.reader import INFLATE_PIECE, _Inflater
from backfill.targets import target_for

STAGES = ("imports", "inflate", "read", "validate", "batch", "checkpoint")


def inflate(files: list[Path]) -> int:
    size = 0
    for path in files:
        with open(path, "rb") as fh:
            inflater = _Inflater(gzipped=True)
            while chunk := fh.read(INFLATE_PIECE):
                inflater.feed(chunk)
                while pieces := inflater.pull():
                    size += sum(map(len, pieces))
    return size


async def read(files: list[Path], stage: str) -> int:
    check = RecordValidator("interactions", Rules()).check
    target = target_for("interactions")
    records = 0
    state = Path(tempfile.mkdtemp(prefix="stages-"))
    cp = Checkpoint(state) if stage == "checkpoint" else None
    if cp is not None:
        await cp.connect(fresh=True)
        await cp.start_leg({}, "stages")
    try:
        for file_id, path in enumerate(files, 1):
            source = LocalFile(path, path.name)
            builder = BatchBuilder(file_id, path.name, check, max_records=10_000, max_bytes=5 << 20)
            blocks = open_blocks(source, START)
            async with contextlib.aclosing(blocks):
                async for block in blocks:
                    records += len(block.lines)
                    if stage == "validate":
                        list(map(check, block.lines))
                    elif stage in ("batch", "checkpoint"):
                        for batch in builder.feed(block):
                            await _send(batch, target.body, cp)
            for batch in builder.finish():
                await _send(batch, target.body, cp)
    finally:
        if cp is not None:
            await cp.close()
        shutil.rmtree(state, ignore_errors=True)
    return records


async def _send(batch: Batch, body: object, cp: Checkpoint | None) -> None:
    assert callable(body)
    body(batch.records)
    if cp is not None:
        await cp.mark_inflight(batch)
        outcome = Outcome(len(batch.records), 0, 1, 0)
        await cp.mark_acked(batch, outcome, leg=(1, 0))


def main(argv: list[str]) -> int:
    allocator.tune()  # as `backfill run`
    stage, files = argv[0], [Path(a) for a in argv[1:]]
    if stage not in STAGES:
        print(f"stages: unknown stage {stage!r} (one of {', '.join(STAGES)})", file=sys.stderr)
        return 2
    out: dict[str, int] = {}
    if stage == "inflate":
        out["bytes"] = inflate(files)
    elif stage != "imports":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out["records"] = runner.run(read(files, stage))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
