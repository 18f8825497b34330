"""Property test: random orders of send / acknowledge / crash over the real checkpoint.

Each leg reads the file through the real reader, builder and resume plan; a random subset
of its batches is sent (marked in flight, 'delivered' to a model server), a random subset of
those is acknowledged, in random order, then the leg crashes. A last leg delivers all.
Invariants: nothing lost; anything delivered twice lies in a range reported as ambiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from collections import Counter
from itertools import pairwise
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.batching import BatchBuilder
from backfill.checkpoint import Checkpoint, Outcome, read_ambiguous
from backfill.sources import LocalFile, Start, fingerprint, open_blocks

LINES = 120


def _check(raw: bytes) -> str | None:
    return "bad" if raw.startswith(b"bad") else None


async def _leg(
    state: Path,
    path: Path,
    batch_size: int,
    data: st.DataObject,
    last: bool,
    mode: str,
    merge: bool = False,
) -> list[int]:
    """One leg; returns the line indexes it delivered to the model server."""
    cp = await Checkpoint.open(state, merge=merge)
    delivered: list[int] = []
    try:
        await cp.start_leg({"kind": "interactions"}, "test")
        source = LocalFile.at(path)
        files = await cp.register_files([(source, fingerprint(path))], force=False)
        ambiguous = await cp.take_ambiguous(mode, {files[0].id: str(path)})
        await cp.plan_files(files, ambiguous if mode == "resend" else [])
        f = files[0]
        if f.done:
            return delivered
        builder = BatchBuilder(
            f.id, str(path), _check, max_records=batch_size, max_bytes=1 << 20, plan=f.plan
        )
        batches = []
        blocks = open_blocks(source, Start(f.start_line, f.start_offset))
        async with contextlib.aclosing(blocks):
            async for block in blocks:
                batches += builder.feed(block)
        batches += builder.finish()
        sent = batches if last else [b for b in batches if data.draw(st.booleans())]
        for b in sent:
            await cp.mark_inflight(b)
            if last or data.draw(st.booleans(), label="stored"):
                delivered += b.record_lines
        acked = sent if last else [b for b in sent if data.draw(st.booleans(), label="acked")]
        order = data.draw(st.permutations(range(len(acked))), label="order") if acked else []
        for i in order:
            b = acked[i]
            # an acknowledged batch was delivered; if the model said 'not stored', it is now
            if not set(b.record_lines) <= set(delivered):
                delivered += b.record_lines
            await cp.mark_acked(b, Outcome(accepted=len(b.records), requests=1))
        if last:
            await cp.mark_file_read(f.id, LINES, None)
    finally:
        await cp.close()
    return delivered


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch_size=st.integers(1, 40),
    legs=st.integers(1, 5),
    mode=st.sampled_from(["resend", "skip"]),
    bad=st.sets(st.integers(0, LINES - 1), max_size=20),
    data=st.data(),
    merge=st.booleans(),
)
def test_resume_never_loses_and_only_repeats_ambiguous(
    batch_size: int, legs: int, mode: str, bad: set[int], data: st.DataObject, merge: bool
) -> None:
    """`merge` (--follow): acknowledged ranges are folded together as they come."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        rows = [(b"bad%d" if i in bad else b'{"n":%d}') % i for i in range(LINES)]
        path.write_bytes(b"\n".join(rows) + b"\n")
        state = Path(tmp) / "state"
        delivered: Counter[int] = Counter()
        for leg in range(legs + 1):
            got = asyncio.run(_leg(state, path, batch_size, data, leg == legs, mode, merge))
            delivered.update(got)
        valid = {i for i in range(LINES) if i not in bad}
        db = sqlite3.connect(state / "checkpoint.sqlite")
        ranges = [(a["first_line"] - 1, a["last_line"]) for a in read_ambiguous(db)]
        acked = db.execute(
            "SELECT start_line, end_line FROM batches WHERE state='acked' ORDER BY start_line"
        ).fetchall()
        settled = db.execute(
            "SELECT SUM(end_line - start_line), SUM(records + invalid + filtered) FROM batches "
            "WHERE state IN ('acked', 'skipped')"
        ).fetchone()
        db.close()
        assert tuple(settled) == (LINES, LINES)  # every line settled once, counts kept
        if merge:  # no two acknowledged ranges that touch are left apart
            assert all(a[1] != b[0] for a, b in pairwise(acked))

        def ambiguous(i: int) -> bool:
            return any(lo <= i < hi for lo, hi in ranges)

        if mode == "resend":
            assert set(delivered) == valid
            assert all(ambiguous(i) for i, n in delivered.items() if n > 1)
        else:  # at most once: nothing twice; only ambiguous lines may be missing
            assert max(delivered.values(), default=1) == 1
            assert all(ambiguous(i) for i in valid - set(delivered))
