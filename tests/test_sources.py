"""The reader: gzip by magic bytes, multi-member streams, truncation, exact offsets for resume."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from backfill.sources import Block, _Inflater, discover, read_blocks

ROWS = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 300)) for i in range(20_000)]
DATA = b"".join(r + b"\n" for r in ROWS)


async def blocks(path: Path, **kw: int) -> list[Block]:
    return [b async for b in read_blocks(path, **kw)]


@pytest.mark.parametrize("cut", [1, 2, 3, 10])
def test_gzip_members_split_anywhere_across_reads(cut: int) -> None:
    a, b = b"hello\n" * 1000, b"world\n" * 1000
    ga, gb = gzip.compress(a), gzip.compress(b)
    blob = ga + gb
    for at in (len(ga) - cut, len(ga), len(ga) + cut):
        inflater = _Inflater(True)
        out = b"".join(inflater.feed(blob[:at]) + inflater.feed(blob[at:]))
        assert out == a + b and inflater.finish() is None


def test_gzip_trailers_padding_junk_and_truncation() -> None:
    blob = gzip.compress(b"x\n" * 100)
    padded = _Inflater(True)
    assert b"".join(padded.feed(blob + b"\0" * 16)) == b"x\n" * 100 and padded.finish() is None
    junk = _Inflater(True)
    junk.feed(blob + b"junk")
    assert junk.finish() == "unexpected bytes after the last gzip member"
    cut = _Inflater(True)
    cut.feed(blob[:-5])
    assert "truncated gzip stream" in (cut.finish() or "")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
async def test_offsets_let_a_resume_start_at_any_line(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / "f"  # no suffix: gzip is recognised by its magic bytes
    path.write_bytes(gzip.compress(DATA, mtime=0) if gz else DATA)
    read = await blocks(path)
    assert [x for b in read for x in b.lines] == ROWS
    for b in read:
        for k in (0, len(b.lines) // 2, len(b.lines)):
            at = b.end_offset(b.first + k)
            assert at == sum(len(r) + 1 for r in ROWS[: b.first + k])
    start = 12_345
    offset = sum(len(r) + 1 for r in ROWS[:start])
    resumed = await blocks(path, start_offset=offset, start_line=start)
    assert resumed[0].first == start and [x for b in resumed for x in b.lines] == ROWS[start:]


async def test_long_lines_bom_and_crlf(tmp_path: Path) -> None:
    long = b'{"x":"' + b"y" * 3_000_000 + b'"}'
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ROWS[0] + b"\r\n" + long + b"\n" + ROWS[1] + b"\n" + long)
    read = await blocks(path, max_line_bytes=1 << 20)
    lines = [x for b in read for x in b.lines]
    problems = {i: p for b in read for i, p in b.problems.items()}
    assert lines == [ROWS[0] + b"\r", b"", ROWS[1], b""]
    assert sorted(problems) == [1, 3]
    assert all(p.length == len(long) and p.raw == long[: 64 * 1024] for p in problems.values())
    assert read[0].offset == 3  # after the BOM
    last = read[-1]
    assert last.end_offset(4) == path.stat().st_size + 1  # as if the last line ended with \n


def test_discover_sorts_and_explains(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl.gz", "c.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in discover([str(tmp_path)])] == ["a.jsonl.gz", "b.jsonl", "c.csv"]
    assert [p.name for p in discover([str(tmp_path / "*.txt")])] == ["notes.txt"]
    with pytest.raises(Exception, match="no input file matches"):
        discover([str(tmp_path / "*.parquet")])
