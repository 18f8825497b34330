"""Finding input files and reading them as blocks of lines, never a whole file in memory.

Files are read with aiofiles in 1 MiB chunks; gzip is detected by its magic bytes (not by
name) and inflated incrementally, member after member. A block is a list of raw lines plus
the position of its first line, so that every record keeps its origin (file, line) and the
checkpoint can name exact line ranges and byte offsets (offsets count *uncompressed* bytes).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import itertools
import os
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple, Protocol

import aiofiles

from backfill.errors import UsageError

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
DATA_SUFFIXES = (
    *(".jsonl", ".ndjson", ".json", ".csv", ".tsv"),
    *(".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz", ".tsv.gz", ".gz"),
)
FINGERPRINT_BLOCK = 64 * 1024
PREVIEW = 64 * 1024  # bytes of an undeliverable line kept for its dead-letter entry
INFLATE_PIECE = 1 << 20  # bounds memory (gzip bombs) and the event loop's time per block
INFLATE_AHEAD = 8  # pieces inflated per hop to the worker thread: at most 2 x 8 MiB held


class Source(Protocol):
    """One input as stored bytes, wherever it lives: a local file today, an object in a
    bucket (s3://, gs://) behind the same four members, so that reading, resuming and
    sharding never ask which store a source is in."""

    @property
    def name(self) -> str:
        """As found (a path, or s3://bucket/key): shown in messages and dead letters."""
        ...

    @property
    def key(self) -> str:
        """Its identity in a checkpoint: the same source on every leg (an absolute path)."""
        ...

    @property
    def relative(self) -> str:
        """Its path below the input root it was found under (a glob's fixed directory, a
        directory given, a file's own directory): the same from any mount point, so the
        shard that owns a source never depends on where the inputs were listed from."""
        ...

    def fingerprint(self) -> Fingerprint:
        """Enough to notice a change between legs. Blocking: call it on a thread."""
        ...

    def chunks(self, offset: int) -> AsyncIterator[bytes]:
        """Its stored bytes from `offset` on, in pieces of about CHUNK bytes."""
        ...


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file on a local (or mounted) filesystem."""

    path: Path
    relative: str

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def key(self) -> str:
        return str(self.path.resolve())

    def fingerprint(self) -> Fingerprint:
        return fingerprint(self.path)

    async def chunks(self, offset: int) -> AsyncIterator[bytes]:
        async with aiofiles.open(self.path, "rb") as fh:
            if offset:
                await fh.seek(offset)
            while chunk := await fh.read(CHUNK):
                yield chunk


# Finders of sources in other stores, by URL scheme ("s3", "gs"); each returns the sources
# that one input names, in sorted key order, or raises UsageError naming what to check.
SCHEMES: dict[str, Callable[[str], list[Source]]] = {}


def _objects(url: str) -> list[Source]:
    """Imported on first use: the cloud extra is optional, and slow to import."""
    from backfill.sources_cloud import find_objects

    return find_objects(url)


SCHEMES.update(s3=_objects, gs=_objects)


def find_sources(inputs: list[str]) -> list[Source]:
    """Every input's sources, local files in sorted path order; each source once."""
    found: dict[str, Source] = {}
    for item in inputs:
        scheme, sep, _ = item.partition("://")
        if sep and scheme in SCHEMES:
            listed = SCHEMES[scheme](item)
        elif sep and scheme.isalpha() and len(scheme) > 1:
            raise UsageError(
                f"cannot read {item!r}: {scheme}:// inputs are not supported "
                f"(local paths{''.join(f', {s}://' for s in sorted(SCHEMES))})"
            )
        else:
            listed = list(_local(item))
        for source in listed:
            found.setdefault(source.key, source)
    if not found:
        raise UsageError("no input files (give files, directories or globs)")
    return sorted(found.values(), key=lambda s: s.name)


def discover(inputs: list[str]) -> list[Path]:
    """Local files, directories (recursively, data files only) and globs, in sorted order."""
    return [s.path for s in find_sources(inputs) if isinstance(s, LocalFile)]


def _local(item: str) -> Iterator[LocalFile]:
    if glob.has_magic(item):
        root = _fixed_prefix(item)
        files = [Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
        if not files:
            raise UsageError(f"no input file matches {item!r}")
        for path in files:
            yield LocalFile(path, os.path.relpath(path, root))
    elif os.path.isdir(item):
        for path in Path(item).rglob("*"):
            if path.is_file() and path.name.endswith(DATA_SUFFIXES):
                yield LocalFile(path, path.relative_to(item).as_posix())
    elif os.path.isfile(item):
        yield LocalFile(Path(item), Path(item).name)
    else:
        raise UsageError(f"input not found: {item}")


def _fixed_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard ("logs" of "logs/2026-*/x")."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), parts[:-1]))
    return os.path.join(*fixed) if fixed else "."


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Enough to notice a file that changed between two legs of a run, cheaply."""

    size: int
    mtime_ns: int
    head: str
    tail: str


def fingerprint(path: Path) -> Fingerprint:
    st = path.stat()
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(FINGERPRINT_BLOCK)).hexdigest()[:32]
        fh.seek(max(0, st.st_size - FINGERPRINT_BLOCK))
        tail = hashlib.sha256(fh.read(FINGERPRINT_BLOCK)).hexdigest()[:32]
    return Fingerprint(st.st_size, st.st_mtime_ns, head, tail)


class Problem(NamedTuple):
    """A line the reader (or a mapping) could not deliver as a record.

    `reason` None: dropped on purpose (a mapping's drop rule); counted as filtered, no
    dead letter.
    """

    reason: str | None
    length: int  # bytes of the line as stored (its slot in Block.lines holds b"")
    raw: bytes = b""  # what to show in the dead-letter entry (possibly a prefix)


@dataclass(slots=True)
class Block:
    """Consecutive lines of one file. `lines[i]` is line index `first + i` (0-based)."""

    lines: list[bytes]
    first: int
    offset: int  # uncompressed byte offset of lines[0]
    raw_bytes: int  # bytes of the file (as stored) consumed since the previous block
    # Lines the reader itself could not deliver (too long, cut by a truncated gzip): their
    # slot in `lines` is b"", and here is why, by line index.
    problems: dict[int, Problem] = field(default_factory=dict)
    warning: str | None = None  # a problem of the file, not of a line
    # Set by a transform that rewrote lines (mapping): each line's length as stored, which
    # then replaces len(lines[i]) and the problems' lengths in offset arithmetic.
    raw_lengths: list[int] | None = None
    end: int | None = None  # offset just after the last line, when the reader knows it
    _sizes: list[int] | None = field(default=None, repr=False)  # cumulative line lengths

    def freeze_lengths(self) -> None:
        """Records each line's stored length; call before a transform rewrites `lines`."""
        self._sizes = None
        if self.raw_lengths is None:
            problems, first = self.problems, self.first
            self.raw_lengths = [
                problems[first + i].length if (first + i) in problems else len(line)
                for i, line in enumerate(self.lines)
            ]

    def end_offset(self, upto: int) -> int:
        """Uncompressed offset where line index `upto` starts (`upto` within this block)."""
        n = upto - self.first
        if n == len(self.lines) and self.end is not None:
            return self.end
        if self._sizes is None:  # computed once: a block is cut at several places
            lengths = self.raw_lengths if self.raw_lengths is not None else map(len, self.lines)
            self._sizes = list(accumulate(lengths, initial=0))
        size = self._sizes[n] + n
        if self.raw_lengths is None:
            size += sum(p.length for i, p in self.problems.items() if i < upto)
        return self.offset + size


class BlockTransform(Protocol):
    """Rewrites a file's blocks between reading and validation (mapping other log shapes).

    It must keep the unit of a block a physical line (a record spanning lines sits in its
    first line's slot, the others are b""), set `raw_lengths` when it changes lines, and
    report lines it cannot map, or drops on purpose, as `problems`.
    """

    def blocks(self, path: Path, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]: ...


class _Inflater:
    """Incremental gzip (multi-member) or pass-through decoding, one bounded piece at a time.

    `feed` hands over a chunk of the file; `pull` returns the next pieces of output (each at
    most INFLATE_PIECE bytes), or [] once that chunk is used up. zlib's `max_length` keeps the
    rest of the input in `unconsumed_tail`, so a chunk that inflates a thousandfold (a gzip
    bomb) is never held inflated: memory stays a few pieces, whatever the ratio.
    """

    def __init__(self, gzipped: bool) -> None:
        self.gzipped = gzipped
        self._d = zlib.decompressobj(wbits=31)
        self._fed = False
        self._input = b""
        self._full = False  # the last piece hit the limit: zlib may hold more output
        self.broken: str | None = None

    def feed(self, data: bytes) -> None:
        self._input = data

    def pull(self, most: int = INFLATE_AHEAD) -> list[bytes]:
        """Up to `most` pieces: several per call, as a worker thread's hop costs more than
        inflating a small piece."""
        out: list[bytes] = []
        while len(out) < most and (piece := self._piece()) is not None:
            out.append(piece)
        return out

    def _piece(self) -> bytes | None:
        if not self.gzipped:
            data, self._input = self._input, b""
            return data or None
        try:
            while not self.broken and (self._input or self._full):
                self._fed = self._fed or bool(self._input)
                piece = self._d.decompress(self._input, INFLATE_PIECE)
                self._input, self._full = self._d.unconsumed_tail, len(piece) == INFLATE_PIECE
                if self._d.eof:  # a member ended; another may follow (multi-member gzip)
                    self._next_member(self._d.unused_data)
                if piece:
                    return piece
        except zlib.error as exc:
            self.broken = f"corrupt gzip data ({exc}); the rest of the file cannot be read"
        return None

    def _next_member(self, rest: bytes) -> None:
        self._d, self._fed, self._full = zlib.decompressobj(wbits=31), False, False
        self._input = rest
        if rest and not (rest.startswith(GZIP_MAGIC) or GZIP_MAGIC.startswith(rest)):
            if rest.strip(b"\0"):  # NUL padding after the last member is harmless
                self.broken = "unexpected bytes after the last gzip member"
            self._input = b""

    def finish(self) -> str | None:
        """Why the stream ended badly, or None."""
        if self.broken:
            return self.broken
        if self.gzipped and self._fed and not self._d.eof:
            return "truncated gzip stream: the file ends in the middle of a compressed member"
        return None


async def _pieces(path: Path, start_offset: int) -> AsyncIterator[tuple[int, bytes, _Inflater]]:
    """(raw bytes consumed, uncompressed piece, inflater) from `start_offset` on.

    Inflating runs on a worker thread a few pieces ahead (zlib releases the GIL), so it
    overlaps the validation of the previous pieces on the event loop; pieces are pulled in
    order, never two batches at once, and at most INFLATE_AHEAD wait inflated. When a chunk
    is used up, the next one is read and its inflating started before the last pieces of
    the previous one are handed over.
    """
    loop = asyncio.get_running_loop()
    async with aiofiles.open(path, "rb") as fh:
        raw = await fh.read(CHUNK)
        inflater = _Inflater(raw.startswith(GZIP_MAGIC))
        skip = start_offset
        if skip and not inflater.gzipped:
            await fh.seek(start_offset)
            yield start_offset, b"", inflater
            raw, skip = await fh.read(CHUNK), 0
        consumed, fed = 0, len(raw)  # fed: bytes of a chunk none of whose pieces came back
        ahead = _inflate(loop, inflater, raw)
        while ahead is not None:
            pieces = await ahead
            consumed, fed = consumed + fed, 0
            if len(pieces) == INFLATE_AHEAD:
                ahead = loop.run_in_executor(None, inflater.pull)
            else:  # this chunk is used up
                raw = await fh.read(CHUNK)
                ahead, fed = _inflate(loop, inflater, raw), len(raw)
            for piece in pieces:
                if skip:
                    take = min(skip, len(piece))
                    piece, skip = piece[take:], skip - take
                yield consumed, piece, inflater
                consumed = 0
        yield consumed, b"", inflater  # lets the caller ask inflater.finish()


def _inflate(
    loop: asyncio.AbstractEventLoop, inflater: _Inflater, raw: bytes
) -> asyncio.Future[list[bytes]] | None:
    """Starts inflating the first pieces of `raw` on a worker thread; None at end of file."""
    if not raw:
        return None
    inflater.feed(raw)
    return loop.run_in_executor(None, inflater.pull)


async def read_blocks(
    path: Path,
    *,
    start_offset: int = 0,
    start_line: int = 0,
    max_line_bytes: int = 1 << 20,
) -> AsyncIterator[Block]:
    """Yield the file's lines in blocks, from an uncompressed offset known to start a line.

    Whatever goes wrong inside the file (truncation, corruption, an endless line) becomes a
    per-line problem or a warning on the last block; it never raises, so the run goes on.
    """
    line_no, carry, carry_offset = start_line, b"", start_offset
    long_line: int = 0  # > 0 while discarding an over-long line: the bytes seen so far
    discarded = 0  # bytes of that line that never reached a chunk
    raw_pending = 0
    inflater: _Inflater | None = None
    problems: dict[int, Problem] = {}
    head = b""  # the start of an over-long line being discarded, for its dead letter
    too_long = f"line longer than {max_line_bytes} bytes (--max-line-bytes)"
    async for consumed, data, inflater in _pieces(path, start_offset):  # noqa: B007
        raw_pending += consumed
        if long_line:
            cut = data.find(b"\n")
            if cut < 0:
                long_line += len(data)
                continue
            discarded = long_line + cut
            problems[line_no] = Problem(too_long, discarded, head)
            carry, data, long_line = b"", data[cut:], 0
            # the placeholder b"" line is completed by the newline at data[0]
        if not data:
            continue
        chunk = carry + data if carry else data
        lines = chunk.split(b"\n")
        carry = lines.pop()
        if lines and max(map(len, lines)) > max_line_bytes:
            for i, text in enumerate(lines):
                if len(text) > max_line_bytes:
                    problems[line_no + i] = Problem(too_long, len(text), text[:PREVIEW])
                    lines[i] = b""
        block = Block(lines, line_no, carry_offset, raw_pending, problems)
        if line_no == 0 and carry_offset == 0 and lines and lines[0].startswith(BOM):
            lines[0] = lines[0][len(BOM) :]
            block.offset = len(BOM)
        carry_offset += len(chunk) - len(carry) + discarded
        block.end = carry_offset
        line_no += len(lines)
        raw_pending, problems, discarded = 0, {}, 0
        if len(carry) > max_line_bytes:
            long_line, head, carry = len(carry), carry[:PREVIEW], b""
        yield block
    failure = inflater.finish() if inflater else None
    if long_line:
        problems[line_no] = Problem(too_long, long_line, head)
        yield Block([b""], line_no, carry_offset, raw_pending, problems, failure)
    elif carry and failure:
        reason = f"{failure}; this last line is incomplete"
        problems[line_no] = Problem(reason, len(carry), carry[:PREVIEW])
        yield Block([b""], line_no, carry_offset, raw_pending, problems, failure)
    elif carry or failure or raw_pending:
        yield Block([carry] if carry else [], line_no, carry_offset, raw_pending, {}, failure)
