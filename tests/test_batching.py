"""The batch builder: exact line ranges, count and byte limits, resume plans."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.batching import UPLOAD_ENVELOPE, BatchBuilder, Plan
from backfill.schema import OUT_OF_WINDOW
from backfill.server import RunningServer
from backfill.sources import Block, Problem
from tests.helpers import dead_letters, interaction, line, numbers, run_engine, write_lines


def check(line: bytes) -> str | None:
    if line.startswith(b"bad"):
        return "bad record"
    if line.startswith(b"old"):
        return OUT_OF_WINDOW
    return None if line.startswith(b"{") else "malformed JSON"


def blocks_of(lines: list[bytes], cuts: list[int]) -> list[Block]:
    """Splits lines into consecutive blocks at the given positions, with true offsets."""
    out, offset, prev = [], 0, 0
    for cut in [*sorted(set(cuts)), len(lines)]:
        if cut <= prev:
            continue
        part = lines[prev:cut]
        block = Block(list(part), prev, offset, 0)
        offset += sum(len(x) + 1 for x in part)
        block.end = offset
        out.append(block)
        prev = cut
    return out


line_kinds = st.sampled_from(["ok", "ok", "ok", "ok", "bad", "old", "blank", "spaces", "big"])


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(line_kinds, min_size=0, max_size=120),
    max_records=st.integers(1, 15),
    max_bytes=st.integers(40, 400),
    cuts=st.lists(st.integers(0, 120), max_size=8),
)
def test_batches_cover_every_line_once_within_limits(
    kinds: list[str], max_records: int, max_bytes: int, cuts: list[int]
) -> None:
    text = {
        "ok": b'{"n":%d}',
        "bad": b"bad%d",
        "old": b"old%d",
        "blank": b"",
        "spaces": b" \t \r",
        "big": b'{"x":"%d' + b"y" * 500 + b'"}',
    }
    lines = [text[k] % i if b"%d" in text[k] else text[k] for i, k in enumerate(kinds)]
    data = b"".join(x + b"\n" for x in lines)
    builder = BatchBuilder(1, "f", check, max_records=max_records, max_bytes=max_bytes)
    batches = []
    for block in blocks_of(lines, cuts):
        batches += builder.feed(block)
    batches += builder.finish()
    position, offset = 0, 0
    for b in batches:
        assert (b.start_line, b.start_offset) == (position, offset)
        assert data[b.start_offset : b.end_offset].count(b"\n") == b.end_line - b.start_line
        assert len(b.records) <= max_records
        assert b.size <= max_bytes or len(b.records) == 1
        assert b.size == UPLOAD_ENVELOPE + sum(len(r) + 1 for r in b.records)
        assert all(lines[i] == r for i, r in zip(b.record_lines, b.records, strict=True))
        position, offset = b.end_line, b.end_offset
    if lines:
        assert position == len(lines)
    valid = [x for x, k in zip(lines, kinds, strict=True) if k in ("ok", "big")]
    assert [r for b in batches for r in b.records] == valid
    assert sum(len(b.invalid) for b in batches) == kinds.count("bad")
    assert sum(b.filtered for b in batches) == kinds.count("old")


def test_resume_plan_skips_acknowledged_ranges_and_keeps_ambiguous_boundaries() -> None:
    lines = [b'{"n":%d}' % i for i in range(100)]
    plan = Plan(skip=((10, 20), (50, 60)), cuts=frozenset({30, 37}))
    builder = BatchBuilder(1, "f", check, max_records=25, max_bytes=10_000, plan=plan)
    batches = []
    for block in blocks_of(lines, [33, 55, 70]):
        batches += builder.feed(block)
    batches += builder.finish()
    ranges = [(b.start_line, b.end_line) for b in batches]
    assert ranges == [(0, 10), (20, 30), (30, 37), (37, 50), (60, 85), (85, 100)]
    assert sum(len(b.records) for b in batches) == 80


def test_reader_problems_become_dead_letters_or_filtered() -> None:
    lines = [b'{"n":0}', b"", b"", b'{"n":3}']
    block = Block(
        lines,
        0,
        0,
        0,
        {1: Problem("too long", 5000, b"xxx"), 2: Problem("a drop rule", 7, filtered=True)},
    )
    builder = BatchBuilder(1, "f", check, max_records=10, max_bytes=10_000)
    [batch] = builder.feed(block) + builder.finish()
    assert [(r.line, r.reason, r.raw) for r in batch.invalid] == [(1, "too long", b"xxx")]
    assert batch.filtered == 1 and batch.records == [b'{"n":0}', b'{"n":3}']
    assert batch.end_offset == (7 + 1) + (5000 + 1) + (7 + 1) + (7 + 1)


def test_a_transform_keeps_offsets_through_replace_reject_and_filter() -> None:
    """The block contract: a line rewritten, refused or left out keeps its stored length, so
    every batch boundary stays at the true offset of the line in the source."""
    lines = [b'{"n":0}', b'{"n":1}', b'{"n":22}', b'{"n":333}', b"", b'{"n":5}']
    starts = [0, 8, 16, 25, 35, 36, 44]  # offset of each line, and of the end
    block = Block(list(lines), 0, 0, 44)
    block.replace(1, b'{"n":1,"hashed":"a-much-longer-value"}')
    block.reject(2, "refused here", lines[2])
    block.filter(3, "a drop rule")
    assert [block.end_offset(k) for k in range(7)] == starts
    assert block.problems == {
        2: Problem("refused here", 8, lines[2]),
        3: Problem("a drop rule", 9, filtered=True),
    }
    batches = []
    for cut in range(1, 7):  # a batch boundary after every line
        builder = BatchBuilder(1, "f", check, max_records=cut, max_bytes=10_000)
        batches = builder.feed(block) + builder.finish()
        assert [b.end_offset for b in batches][:-1] == [starts[b.end_line] for b in batches][:-1]
        assert batches[-1].end_offset == starts[6]
    [batch] = batches
    assert [(r.line, r.reason, r.raw) for r in batch.invalid] == [(2, "refused here", lines[2])]
    assert batch.filtered == 1
    assert batch.records == [lines[0], b'{"n":1,"hashed":"a-much-longer-value"}', lines[5]]


@pytest.mark.parametrize(
    ("newline", "gz"), [(b"\n", False), (b"\r\n", False), (b"\n", True)], ids=["lf", "crlf", "gz"]
)
async def test_whitespace_only_lines_are_blank_not_dead_letters(
    tmp_path: Path, server: RunningServer, newline: bytes, gz: bool
) -> None:
    good = [line(interaction(i)) for i in range(5)]
    content = [
        good[0],
        b"  \t ",
        good[1],
        b" \r",
        b"\t",
        b"\r",  # with CRLF endings: "\r\r"
        good[2],
        b'{"type": "search", ',  # line 8
        b"   ",
        good[3],
        line({**interaction(99), "type": "teleport"}),  # line 11
        b" \t\r",
        good[4],
    ]
    path = write_lines(tmp_path / "blanks.jsonl", content, gz=gz, newline=newline)
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)])
    assert numbers(server.records("interactions")) == [0, 1, 2, 3, 4]
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert [(e["line"], e["reason"].split(":")[0]) for e in entries] == [
        (8, "malformed JSON"),
        (11, "type"),
    ]
    assert (report["exit_code"], report["records_read"], report["records_invalid"]) == (0, 7, 2)
