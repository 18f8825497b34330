"""The reader: gzip by magic bytes, multi-member streams, truncation, exact offsets for resume."""

from __future__ import annotations

import bisect
import contextlib
import gzip
import json
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backfill.errors import UsageError
from backfill.ids import IdLines
from backfill.server import RunningServer
from backfill.sources import (
    PREVIEW,
    SCHEMES,
    START,
    Block,
    Fingerprint,
    LocalFile,
    Start,
    find_sources,
    open_blocks,
)
from backfill.sources.reader import INFLATE_AHEAD, INFLATE_PIECE, _Inflater
from tests.faultfs import FaultFS, FaultFSUnavailable
from tests.helpers import dead_letters, interaction, line, numbers, run_engine

ROWS = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 300)) for i in range(20_000)]
DATA = b"".join(r + b"\n" for r in ROWS)


async def blocks(
    path: Path, *, start_line: int = 0, start_offset: int = 0, max_line_bytes: int = 1 << 20
) -> list[Block]:
    opened = open_blocks(
        LocalFile.at(path), Start(start_line, start_offset), max_line_bytes=max_line_bytes
    )
    async with contextlib.aclosing(opened):
        return [b async for b in opened]


def inflate(inflater: _Inflater, data: bytes) -> list[bytes]:
    """Feeds one chunk and pulls every piece it holds."""
    inflater.feed(data)
    return [piece for pieces in iter(inflater.pull, []) for piece in pieces]


@pytest.mark.parametrize("cut", [1, 2, 3, 10])
def test_gzip_members_split_anywhere_across_reads(cut: int) -> None:
    a, b = b"hello\n" * 1000, b"world\n" * 1000
    ga, gb = gzip.compress(a), gzip.compress(b)
    blob = ga + gb
    for at in (len(ga) - cut, len(ga), len(ga) + cut):
        inflater = _Inflater(True)
        out = b"".join(inflate(inflater, blob[:at]) + inflate(inflater, blob[at:]))
        assert out == a + b and inflater.finish() is None


def _member(payload: bytes, flags: int) -> bytes:
    """One gzip member with the optional header fields of `flags` (RFC 1952), as gzip
    writers other than Python's produce them (a name, a comment, extra fields, a CRC)."""
    head = b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\xff"
    head += struct.pack("<H", 5) + b"hello" if flags & 4 else b""
    head += b"name.jsonl\0" if flags & 8 else b""
    head += b"a comment\0" if flags & 16 else b""
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF) if flags & 2 else b""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(payload) + deflate.flush()
    return head + body + struct.pack("<II", zlib.crc32(payload), len(payload))


@pytest.mark.parametrize("flags", [2, 4, 8, 16, 10, 12, 20, 24, 30])
def test_a_member_header_split_anywhere_across_reads_is_read_whole(flags: int) -> None:
    """ISA-L's inflate fails on a header with FHCRC, or two of FEXTRA/FNAME/FCOMMENT, that
    arrives in two calls (zlib's does not): every record after it was lost, and the run
    exited 0 with a warning. Cut the second member's header at every byte, and the first's."""
    a, b = b'{"a":1}\n' * 1000, b'{"b":2}\n' * 1000
    first, second = _member(a, 0), _member(b, flags)
    blob = first + second
    header = len(second) - len(zlib.compress(b)) + 40  # past the end of any header
    for at in [*range(1, header), *range(len(first), len(first) + header)]:
        inflater = _Inflater(True)
        out = b"".join(inflate(inflater, blob[:at]) + inflate(inflater, blob[at:]))
        assert (out == a + b, inflater.finish()) == (True, None), (flags, at)


def test_a_stream_ending_inside_a_member_header_is_truncated() -> None:
    blob = _member(b"x\n" * 100, 0) + _member(b"y\n", 24)[:15]
    inflater = _Inflater(True)
    assert b"".join(inflate(inflater, blob)) == b"x\n" * 100
    assert inflater.finish() == (
        "truncated gzip stream: the file ends in the middle of a compressed member"
    )


def test_gzip_trailers_padding_junk_and_truncation() -> None:
    blob = gzip.compress(b"x\n" * 100)
    padded = _Inflater(True)
    assert b"".join(inflate(padded, blob + b"\0" * 16)) == b"x\n" * 100 and padded.finish() is None
    junk = _Inflater(True)
    inflate(junk, blob + b"junk")
    assert junk.finish() == "unexpected bytes after the last gzip member"
    cut = _Inflater(True)
    inflate(cut, blob[:-5])
    assert "truncated gzip stream" in (cut.finish() or "")


def test_inflater_holds_a_few_bounded_pieces_of_a_bomb_at_a_time() -> None:
    """A chunk that inflates 1000x is pulled a few pieces at a time, the rest kept compressed."""
    chunk = gzip.compress(b"\0" * (64 * INFLATE_PIECE), compresslevel=9)
    assert len(chunk) < INFLATE_PIECE // 8
    inflater = _Inflater(True)
    inflater.feed(chunk)
    assert inflater.pull(1) == [b"\0" * INFLATE_PIECE]
    pulls = [[len(piece) for piece in pieces] for pieces in iter(inflater.pull, [])]
    assert pulls == [
        [INFLATE_PIECE] * min(INFLATE_AHEAD, 63 - i) for i in range(0, 63, INFLATE_AHEAD)
    ]
    assert inflater.finish() is None


def test_a_truncated_bomb_yields_the_output_zlib_held_back_at_the_piece_limit() -> None:
    """Input used up, yet a piece at the limit: zlib may still hold a match's output.

    Cut the stream near where its output crosses INFLATE_PIECE: at some cut the last
    match straddles the limit, and only asking zlib again yields its remaining bytes.
    """
    blob = gzip.compress(b"\0" * (2 * INFLATE_PIECE), compresslevel=9)

    def inflated(cut: int) -> bytes:
        return zlib.decompressobj(wbits=31).decompress(blob[:cut])

    crossing = bisect.bisect_left(range(len(blob)), INFLATE_PIECE, key=lambda c: len(inflated(c)))
    for cut in range(crossing - 32, crossing + 32):
        inflater = _Inflater(True)
        assert b"".join(inflate(inflater, blob[:cut])) == inflated(cut)
        assert "truncated gzip stream" in (inflater.finish() or "")


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


def test_find_sources_sorts_and_explains(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl.gz", "c.csv", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = find_sources([str(tmp_path)])
    assert [s.relative for s in found] == ["a.jsonl.gz", "b.jsonl", "c.csv"]
    assert [s.relative for s in find_sources([str(tmp_path / "*.txt")])] == ["notes.txt"]
    with pytest.raises(Exception, match="no input file matches"):
        find_sources([str(tmp_path / "*.parquet")])


MB = 1 << 20
RSS_LIMIT_MB = 200  # the old reader, holding a chunk's whole output, peaked at 300-570 MB
REPEATED = b'{"type":"home_page_view","user_id":"u-1","timestamp":"2026-06-01T00:00:00.000Z"}\n'


def gzip_of(path: Path, part: bytes, times: int, level: int = 1) -> Path:
    """One gzip member of `part` x `times`, compressed piece by piece, never built whole."""
    with gzip.open(path, "wb", compresslevel=level) as fh:
        for _ in range(times):
            fh.write(part)
    return path


def dry_run(tmp_path: Path, source: Path) -> tuple[int, float, dict[str, Any]]:
    """Exit code, peak RSS (MB) and JSON report of `backfill run --dry-run` in a subprocess.

    The peak is the child's own VmHWM, sampled until it exits: a high-water mark, so the
    samples miss nothing but the last few milliseconds. (`ru_maxrss` would not do: a child
    spawned with vfork inherits the test process's own peak, hundreds of MB in a full run.)
    """
    report = tmp_path / "report.json"
    args = [sys.executable, "-m", "backfill", "run", str(source), "--dry-run"]
    args += ["--progress", "off", "--state-dir", str(tmp_path / "state"), "--report", str(report)]
    peak_kb = 0
    with open(tmp_path / "output.txt", "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while proc.poll() is None:
        peak_kb = max(peak_kb, _high_water_kb(proc.pid))
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("backfill run --dry-run did not finish in 240 s")
        time.sleep(0.02)
    return proc.returncode, peak_kb / 1024, json.loads(report.read_text())


def _high_water_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # exited meanwhile
        return 0
    for row in status.splitlines():
        if row.startswith("VmHWM:"):
            return int(row.split()[1])
    return 0  # a zombie: its memory is gone


def test_gzip_bomb_of_zeros_is_one_dead_letter_in_bounded_memory(tmp_path: Path) -> None:
    """500 MB of zeros, no newline, in a 2 MB gzip: inflated piece by piece and discarded."""
    bomb = gzip_of(tmp_path / "zeros.jsonl.gz", b"\0" * MB, 500)
    assert bomb.stat().st_size < 3 * MB
    code, peak_mb, report = dry_run(tmp_path, bomb)
    # an input that is entirely invalid ends with exit 3 and a hint (its only line is the bomb)
    assert code == 3, (tmp_path / "output.txt").read_text()
    assert "the only record read is invalid" in report["error"]
    assert peak_mb < RSS_LIMIT_MB
    assert (report["records_read"], report["records_invalid"], report["warnings"]) == (1, 1, [])
    [entry] = dead_letters(tmp_path / "state" / "dry-run" / "dead-letter.jsonl")
    assert entry["line"] == 1
    assert entry["reason"] == f"line longer than {MB} bytes (--max-line-bytes)"
    assert entry["record"] == "\0" * PREVIEW


def test_gzip_bomb_of_repeated_records_delivers_each_in_bounded_memory(tmp_path: Path) -> None:
    """200 MB of one valid line repeated, in a 0.7 MB gzip: every record is read and valid."""
    lines = 200 * MB // len(REPEATED) // 10_000 * 10_000
    bomb = gzip_of(tmp_path / "same.jsonl.gz", REPEATED * 10_000, lines // 10_000, level=9)
    assert bomb.stat().st_size < MB
    code, peak_mb, report = dry_run(tmp_path, bomb)
    assert code == 0, (tmp_path / "output.txt").read_text()
    assert peak_mb < RSS_LIMIT_MB
    assert (report["records_read"], report["records_valid"]) == (lines, lines)
    assert (report["records_invalid"], report["warnings"]) == (0, [])


FAULTY_RECORDS = 30_000


@pytest.fixture
def faulty_disk(tmp_path: Path) -> Iterator[FaultFS]:
    """5 MB of records on a FUSE mount whose bytes [2.5 MiB, 3 MiB) fail with EIO."""
    records = b"".join(line(interaction(i)) + b"\n" for i in range(FAULTY_RECORDS))
    fs = FaultFS(tmp_path / "mnt", "day.jsonl", records, (5 * MB // 2, 3 * MB))
    try:
        fs.mount()
    except FaultFSUnavailable as exc:
        pytest.skip(f"a real read error needs FUSE: {exc}")
    try:
        yield fs
    finally:
        fs.unmount()


async def test_a_read_error_mid_file_stops_the_run_and_the_resume_loads_the_rest(
    tmp_path: Path, server: RunningServer, faulty_disk: FaultFS
) -> None:
    source = str(faulty_disk.path)
    first = await run_engine(tmp_path, server.url, server.secret_key, [source])
    assert first["exit_code"] == 3 and faulty_disk.failed_reads >= 1
    assert first["error"] == f"cannot read {source}: Input/output error"
    before = numbers(server.records("interactions"))
    bad_band_starts = faulty_disk.data[: faulty_disk.bad_from].count(b"\n")
    assert len(set(before)) == len(before) and all(n < bad_band_starts for n in before)
    faulty_disk.broken = False  # the disk is back
    second = await run_engine(tmp_path, server.url, server.secret_key, [source])
    assert second["exit_code"] == 0
    assert sorted(numbers(server.records("interactions"))) == list(range(FAULTY_RECORDS))


def test_sources_know_their_path_below_the_input_root(tmp_path: Path) -> None:
    """The relative path is the same whichever mount point the inputs are listed from."""
    for mount in ("a", "b"):
        day = tmp_path / mount / "logs" / "2026-06"
        day.mkdir(parents=True)
        (day / "01.jsonl").write_text("{}\n")
        (day / "02.jsonl.gz").write_bytes(b"")
    seen = {
        mount: [
            [s.relative for s in find_sources([str(tmp_path / mount / "logs" / pattern)])]
            for pattern in ("*/*.jsonl*", "2026-06/*", "")
        ]
        for mount in ("a", "b")
    }
    assert seen["a"] == seen["b"]
    both = ["2026-06/01.jsonl", "2026-06/02.jsonl.gz"]
    assert seen["a"] == [both, ["01.jsonl", "02.jsonl.gz"], both]
    [single] = find_sources([str(tmp_path / "a" / "logs" / "2026-06" / "01.jsonl")])
    assert (single.relative, single.key) == (
        "01.jsonl",
        str((tmp_path / "a/logs/2026-06/01.jsonl").resolve()),
    )


def test_an_unknown_url_scheme_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="ftp:// inputs are not supported"):
        find_sources(["ftp://host/logs/*.jsonl"])


async def test_a_local_file_streams_its_bytes_from_an_offset(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000
    (tmp_path / "f.bin").write_bytes(data)
    [source] = find_sources([str(tmp_path / "f.bin")])
    assert b"".join([c async for c in source.chunks(1000)]) == data[1000:]


@dataclass
class MemorySource:
    """A Source that is no file: bytes in memory, handed over in tiny chunks; it notes
    where it was opened and how often its streams were closed."""

    data: bytes
    name: str = "mem://bucket/in.jsonl"
    key: str = "mem://bucket/in.jsonl"
    relative: str = "in.jsonl"
    piece: int = 7
    opened: list[int] = field(default_factory=list)
    closed: int = 0

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(len(self.data), 0, str(zlib.crc32(self.data)), "")

    async def chunks(self, offset: int) -> AsyncIterator[bytes]:
        self.opened.append(offset)
        try:
            for at in range(offset, len(self.data), self.piece):
                yield self.data[at : at + self.piece]
        finally:
            self.closed += 1


async def _lines(source: MemorySource, start: Start = START) -> dict[int, bytes]:
    opened = open_blocks(source, start)
    async with contextlib.aclosing(opened):
        return {b.first + i: x async for b in opened for i, x in enumerate(b.lines) if x}


@pytest.mark.parametrize("gz", [False, True])
async def test_any_source_is_read_and_resumed_like_a_file(gz: bool) -> None:
    rows = ROWS[:300]
    plain = b"".join(r + b"\n" for r in rows)
    source = MemorySource(gzip.compress(plain, mtime=0) if gz else plain)
    assert await _lines(source) == dict(enumerate(rows))
    start = Start(200, sum(len(r) + 1 for r in rows[:200]))
    source.opened.clear()
    assert await _lines(source, start) == {i: rows[i] for i in range(200, 300)}
    # gzip is inflated from the top; a plain source is opened again at the offset
    assert source.opened == ([0] if gz else [0, start.offset])
    assert source.closed == 1 + len(source.opened)  # every stream opened was closed


async def test_open_blocks_closes_the_source_when_its_reader_stops_early() -> None:
    source = MemorySource(DATA, piece=1 << 16)
    mapping = IdLines("users")  # a transform in the chain: closed with the rest
    opened = open_blocks(source, START, [mapping])
    async with contextlib.aclosing(opened):
        first = await anext(opened)
    assert first.first == 0 and source.opened == [0] and source.closed == 1


async def test_a_run_reads_a_registered_store_and_resumes_by_the_source_key(
    tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [line(interaction(i)) for i in range(50)] + [b'{"type":"nope"}']
    source = MemorySource(gzip.compress(b"".join(r + b"\n" for r in rows), mtime=0))
    monkeypatch.setitem(SCHEMES, "mem", lambda item: [source])
    first = await run_engine(tmp_path, server.url, server.secret_key, ["mem://bucket/*"])
    assert (first["exit_code"], first["records_accepted"], first["records_invalid"]) == (0, 50, 1)
    assert sorted(numbers(server.records("interactions"))) == list(range(50))
    [letter] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert (letter["source"], letter["line"]) == ("mem://bucket/in.jsonl", 51)
    again = await run_engine(tmp_path, server.url, server.secret_key, ["mem://bucket/*"])
    assert again["this_leg"]["records_read"] == 0 and len(server.records("interactions")) == 50
