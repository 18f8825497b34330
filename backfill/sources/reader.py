"""Reading a source as blocks of lines, never a whole source in memory.

Stored bytes come from `Source.chunks`; gzip is detected by its magic bytes (not by name)
and inflated incrementally, member after member, on a worker thread. A block is a list of
raw lines plus the position of its first line, so that every record keeps its origin
(source, line) and the checkpoint can name exact line ranges and byte offsets (offsets count
*uncompressed* bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import ModuleType
from typing import Any, Final

from backfill.sources.block import PREVIEW, Block, Problem
from backfill.sources.source import Source


def _inflate_module() -> tuple[ModuleType, str]:
    """ISA-L's inflate (a dependency: the same stream in 2.3x less CPU than zlib's, see
    README, Benchmarks); the standard library's zlib on a platform without its wheel."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib, "zlib"
    return isal_zlib, "isal"


_zlib, INFLATER = _inflate_module()
_ERRORS: Final[tuple[type[Exception], ...]] = (zlib.error, _zlib.error)

GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
INFLATE_PIECE = 1 << 20  # bounds memory (gzip bombs) and the event loop's time per block
INFLATE_AHEAD = 8  # pieces inflated per hop to the worker thread: at most 2 x 8 MiB held


HEADER_MOST = 1 << 20  # a member header held back whole (FEXTRA, FNAME, FCOMMENT) at most
FHCRC, FEXTRA, FNAME, FCOMMENT = 2, 4, 8, 16


def gzip_header_size(data: bytes) -> int | None:
    """The length of the gzip member header at the start of `data` (RFC 1952), or None while
    `data` holds only part of it. ISA-L's inflate, unlike zlib's, fails on a header that
    arrives split across two calls when it has FHCRC or two of FEXTRA, FNAME, FCOMMENT, so a
    member's header is handed over whole."""
    if len(data) < 10:
        return None
    flags, at = data[3], 10
    if flags & FEXTRA:
        if len(data) < at + 2:
            return None
        at += 2 + int.from_bytes(data[at : at + 2], "little")
    for flag in (FNAME, FCOMMENT):
        if flags & flag and at <= len(data):
            end = data.find(b"\0", at)
            if end < 0:
                return None
            at = end + 1
    at += 2 if flags & FHCRC else 0
    return at if at <= len(data) else None


def gzip_decompressor() -> Any:
    """A decompressor of one gzip member, from the inflater the engine uses (INFLATER)."""
    return _zlib.decompressobj(wbits=31)


class _Inflater:
    """Incremental gzip (multi-member) or pass-through decoding, one bounded piece at a time.

    `feed` hands over a chunk of the file; `pull` returns the next pieces of output (each at
    most INFLATE_PIECE bytes), or [] once that chunk is used up. zlib's `max_length` keeps the
    rest of the input in `unconsumed_tail`, so a chunk that inflates a thousandfold (a gzip
    bomb) is never held inflated: memory stays a few pieces, whatever the ratio.
    """

    def __init__(self, gzipped: bool) -> None:
        self.gzipped = gzipped
        self._d = gzip_decompressor()
        self._fed = False
        self._input = b""
        self._full = False  # the last piece hit the limit: zlib may hold more output
        self._held = b""  # the start of a member whose header is not whole yet
        self.broken: str | None = None

    def feed(self, data: bytes) -> None:
        self._input, self._held = self._held + data, b""

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
                if not self._fed and self._header_split():
                    return None
                self._fed = self._fed or bool(self._input)
                piece = self._d.decompress(self._input, INFLATE_PIECE)
                self._input, self._full = self._d.unconsumed_tail, len(piece) == INFLATE_PIECE
                if self._d.eof:  # a member ended; another may follow (multi-member gzip)
                    self._next_member(self._d.unused_data)
                if piece:
                    return bytes(piece)
        except _ERRORS as exc:
            self.broken = f"corrupt gzip data ({exc}); the rest of the file cannot be read"
        return None

    def _header_split(self) -> bool:
        """A member starts with only part of its header: held back for the next chunk."""
        data = self._input
        if len(data) >= HEADER_MOST or not data.startswith(GZIP_MAGIC[: len(data)]):
            return False  # not a header to wait for: the inflater says what is wrong
        if gzip_header_size(data) is not None:
            return False
        self._held, self._input = data, b""
        return True

    def _next_member(self, rest: bytes) -> None:
        self._d, self._fed, self._full = gzip_decompressor(), False, False
        self._input = rest
        if rest and not (rest.startswith(GZIP_MAGIC) or GZIP_MAGIC.startswith(rest)):
            if rest.strip(b"\0"):  # NUL padding after the last member is harmless
                self.broken = "unexpected bytes after the last gzip member"
            self._input = b""

    def finish(self) -> str | None:
        """Why the stream ended badly, or None."""
        if self.broken:
            return self.broken
        if self.gzipped and (self._held or (self._fed and not self._d.eof)):
            return "truncated gzip stream: the file ends in the middle of a compressed member"
        return None


async def _pieces(
    source: Source, start_offset: int
) -> AsyncGenerator[tuple[int, bytes, _Inflater], None]:
    """(raw bytes consumed, uncompressed piece, inflater) from `start_offset` on.

    Inflating runs on a worker thread a few pieces ahead (zlib releases the GIL), so it
    overlaps the validation of the previous pieces on the event loop; pieces are pulled in
    order, never two batches at once, and at most INFLATE_AHEAD wait inflated. When a chunk
    is used up, the next one is read and its inflating started before the last pieces of
    the previous one are handed over. The first chunk tells gzip from plain text; a plain
    source resumed at an offset is then opened again there.
    """
    loop = asyncio.get_running_loop()
    stream = source.chunks(0)
    try:
        raw = await _next_chunk(stream)
        inflater = _Inflater(raw.startswith(GZIP_MAGIC))
        skip = start_offset
        if skip and not inflater.gzipped:
            await _aclose(stream)
            stream = source.chunks(start_offset)
            yield start_offset, b"", inflater
            raw, skip = await _next_chunk(stream), 0
        consumed, fed = 0, len(raw)  # fed: bytes of a chunk none of whose pieces came back
        ahead = _inflate(loop, inflater, raw)
        while ahead is not None:
            pieces = await ahead
            consumed, fed = consumed + fed, 0
            if len(pieces) == INFLATE_AHEAD:
                ahead = loop.run_in_executor(None, inflater.pull)
            else:  # this chunk is used up
                raw = await _next_chunk(stream)
                ahead, fed = _inflate(loop, inflater, raw), len(raw)
            for piece in pieces:
                if skip:
                    take = min(skip, len(piece))
                    piece, skip = piece[take:], skip - take
                yield consumed, piece, inflater
                consumed = 0
        yield consumed, b"", inflater  # lets the caller ask inflater.finish()
    finally:
        await _aclose(stream)


async def _next_chunk(stream: AsyncIterator[bytes]) -> bytes:
    """The next non-empty chunk, b"" at the end."""
    while (chunk := await anext(stream, None)) is not None:
        if chunk:
            return chunk
    return b""


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    if isinstance(stream, AsyncGenerator):
        await stream.aclose()


def _inflate(
    loop: asyncio.AbstractEventLoop, inflater: _Inflater, raw: bytes
) -> asyncio.Future[list[bytes]] | None:
    """Starts inflating the first pieces of `raw` on a worker thread; None at end of file."""
    if not raw:
        return None
    inflater.feed(raw)
    return loop.run_in_executor(None, inflater.pull)


async def read_blocks(
    source: Source,
    *,
    start_offset: int = 0,
    start_line: int = 0,
    max_line_bytes: int = 1 << 20,
) -> AsyncGenerator[Block, None]:
    """Yield the source's lines in blocks, from an uncompressed offset known to start a line.

    Whatever goes wrong inside the source (truncation, corruption, an endless line) becomes a
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
    async with contextlib.aclosing(_pieces(source, start_offset)) as pieces:
        async for consumed, data, inflater in pieces:  # noqa: B007
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
                _set_aside(lines, line_no, max_line_bytes, too_long, problems)
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
    elif carry and failure:
        reason = f"{failure}; this last line is incomplete"
        problems[line_no] = Problem(reason, len(carry), carry[:PREVIEW])
    elif carry or failure or raw_pending:
        yield Block([carry] if carry else [], line_no, carry_offset, raw_pending, {}, failure)
        return
    if problems:
        yield Block([b""], line_no, carry_offset, raw_pending, problems, failure)


def _set_aside(
    lines: list[bytes], first: int, most: int, reason: str, problems: dict[int, Problem]
) -> None:
    """Lines longer than `most` bytes become problems (their slot b"")."""
    for i, text in enumerate(lines):
        if len(text) > most:
            problems[first + i] = Problem(reason, len(text), text[:PREVIEW])
            lines[i] = b""
