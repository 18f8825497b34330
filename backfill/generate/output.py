"""Files on disk: plain or gzip sinks written in large pieces, and the broken files.

Gzip output comes from zlib with a raw header (mtime 0, no file name), so the same lines give
the same bytes on every run. Compression level 1: generation is the benchmark's feeder and
level 1 is twice as fast as the default for ~15% more bytes.
"""

from __future__ import annotations

import os
import random
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

GZIP_WBITS: Final = 31  # a gzip wrapper around deflate
COMPRESS_LEVEL: Final = 1
READ_CHUNK: Final = 1 << 20
IN_FLIGHT: Final = 2  # pieces (~1.4 MiB each) handed to the compressing thread, at most


class Sink:
    """One output file, used as a context manager; `write` takes encoded lines.

    Gzip compression runs on a worker thread (zlib releases the GIL), overlapping with the
    generation of the next piece: on two cores it nearly halves the wall time of a run. At most
    `IN_FLIGHT` pieces wait for it, so memory stays bounded; pieces are compressed in order by
    the one worker, so the bytes do not depend on timing.
    """

    def __init__(self, path: Path, gzipped: bool) -> None:
        self.path = path
        self._fh = open(path, "wb")  # noqa: SIM115 -- closed by __exit__
        self._zip = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, GZIP_WBITS) if gzipped else None
        self._worker = ThreadPoolExecutor(1, "gzip") if gzipped else None
        self._in_flight: deque[Future[None]] = deque()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._worker:
                self._drain(0)
                if self._zip and exc_info[0] is None:
                    self._fh.write(self._zip.flush())
        finally:
            if self._worker:
                self._worker.shutdown(cancel_futures=True)
            self._fh.close()

    def write(self, data: bytes) -> None:
        if self._worker is None:
            self._fh.write(data)
            return
        self._drain(IN_FLIGHT - 1)
        self._in_flight.append(self._worker.submit(self._compress, data))

    def _compress(self, data: bytes) -> None:
        assert self._zip is not None
        self._fh.write(self._zip.compress(data))

    def _drain(self, keep: int) -> None:
        """Wait until at most `keep` pieces are in flight; a worker's error is raised here."""
        while len(self._in_flight) > keep:
            self._in_flight.popleft().result()


def write_empty(path: Path) -> None:
    """A zero-byte file, as a rotation or an interrupted compression job leaves behind."""
    path.write_bytes(b"")


def cut_gzip(path: Path, rng: random.Random) -> int:
    """Cut a gzip file in the middle of its stream, as an interrupted copy leaves it.

    Returns the complete lines a streaming reader still recovers: everything zlib can inflate
    from the remaining bytes, up to the last newline. The cut is moved on until it leaves part
    of a line behind it, so a reader sees exactly one broken line, at the returned count + 1.
    """
    size = path.stat().st_size
    cut = max(12, int(size * rng.uniform(0.35, 0.65)))
    inflater = zlib.decompressobj(GZIP_WBITS)
    lines, tail = 0, b""
    with open(path, "rb") as fh:
        fed = 0
        while fed < cut:  # inflate up to the planned cut, a chunk at a time
            chunk = fh.read(min(READ_CHUNK, cut - fed))
            fed += len(chunk)
            text = inflater.decompress(chunk)
            lines, tail = lines + text.count(b"\n"), text[-1:] or tail
        planned = (cut, lines)
        while tail in (b"", b"\n") and not inflater.eof and (byte := fh.read(1)):
            cut += 1  # a cut exactly between two lines: move it into the next one
            text = inflater.decompress(byte)
            lines, tail = lines + text.count(b"\n"), text[-1:] or tail
        if inflater.eof:  # no line left to break: keep the planned cut after all
            cut, lines = planned
    os.truncate(path, cut)
    return lines
