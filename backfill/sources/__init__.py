"""Finding inputs, wherever they are stored, and opening them as blocks of lines.

    find_sources(inputs) ──Source──> open_blocks(source, start, transforms) ──Block──> batching
                                      read_blocks (reader: chunks, gunzip, lines)
                                      then each BlockTransform (mapping, ids, privacy, marks)

    source     the Source protocol a store implements (name, key, relative, fingerprint,
               chunks) and its Fingerprint
    local      local files, directories and globs (LocalFile)
    cloud      s3:// and gs:// objects (ObjectSource, obstore: the optional cloud extra)
    reader     stored bytes -> blocks of lines (gzip, over-long lines, truncation)
    tail       a local file that is still growing (--follow): complete lines only
    block      Block and Problem: the contract between the reader, transforms and batching

Another store registers a finder in SCHEMES (s3:// and gs:// do, importing `cloud` on first
use); its sources then go through the same reader, checkpoint and shards without any caller
knowing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import NamedTuple

from backfill.errors import UsageError
from backfill.sources.block import PREVIEW, Block, BlockTransform, Problem
from backfill.sources.local import (
    DATA_SUFFIXES,
    LocalFile,
    fingerprint,
    local_files,
    prefix_hashes,
)
from backfill.sources.reader import read_blocks
from backfill.sources.source import CHUNK, Fingerprint, Source
from backfill.sources.tail import Tail

__all__ = [
    "CHUNK",
    "DATA_SUFFIXES",
    "PREVIEW",
    "SCHEMES",
    "START",
    "Block",
    "BlockTransform",
    "Fingerprint",
    "LocalFile",
    "Problem",
    "Source",
    "Start",
    "Tail",
    "find_sources",
    "fingerprint",
    "follow_blocks",
    "open_blocks",
    "prefix_hashes",
]

# Finders of sources in other stores, by URL scheme ("s3", "gs"); each returns the sources
# that one input names, in sorted key order, or raises UsageError naming what to check.
SCHEMES: dict[str, Callable[[str], list[Source]]] = {}


def _objects(url: str) -> list[Source]:
    """Imported on first use: the cloud extra is optional, and slow to import."""
    from backfill.sources.cloud import find_objects

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
            listed = list(local_files(item))
        for source in listed:
            found.setdefault(source.key, source)
    if not found:
        raise UsageError("no input files (give files, directories or globs)")
    return sorted(found.values(), key=lambda source: source.name)


class Start(NamedTuple):
    """Where reading a source begins: a line index and the uncompressed offset it starts at
    (a resume position from the checkpoint), the top of the source by default."""

    line: int = 0
    offset: int = 0


START = Start()


def open_blocks(
    source: Source,
    start: Start = START,
    transforms: Sequence[BlockTransform] = (),
    *,
    max_line_bytes: int = 1 << 20,
) -> AsyncGenerator[Block, None]:
    """The one way to read an input: its blocks from `start`, through `transforms` in order.

    Callers close it with `contextlib.aclosing`; every stage of the chain is then closed
    at once (outermost first), so that a source is never left open by a reader that stops
    early (a preview, a sample, a stop).
    """
    blocks = read_blocks(
        source, start_offset=start.offset, start_line=start.line, max_line_bytes=max_line_bytes
    )
    return _chained(source, blocks, transforms)


def follow_blocks(
    source: Source, tail: Tail, transforms: Sequence[BlockTransform] = ()
) -> AsyncGenerator[Block, None]:
    """A growing file's blocks (--follow) through the same transforms: see `Tail`."""
    return _chained(source, tail.blocks(), transforms)


async def _chained(
    source: Source, first: AsyncIterator[Block], transforms: Sequence[BlockTransform]
) -> AsyncGenerator[Block, None]:
    stages: list[AsyncIterator[Block]] = [first]
    for transform in transforms:
        stages.append(transform.blocks(source, stages[-1]))
    try:
        async for block in stages[-1]:
            yield block
    finally:
        for stage in reversed(stages):
            if isinstance(stage, AsyncGenerator):
                await stage.aclose()
