"""A compiled mapping applied to a file's blocks of lines, between reading and validation.

The [mapping] table of the config file (schema and example: backfill.mapping.spec) becomes a
BlockTransform:

    open_blocks ──Block (physical lines)──> MappingTransform.blocks ──Block (Miso JSON)──> batching

The unit of a block stays the physical line, so that checkpoints and resume offsets keep
meaning the same thing as for native files: `lines[i]` is the mapped record that *starts* on
line `first + i`, a CSV record spanning several lines leaves b"" (blank) on its other lines,
the header leaves b"", and the new block keeps the lines' lengths as stored. A record that
cannot be mapped is rejected with its reason (a dead letter); one left out on purpose is
filtered, with the drop rule as its reason. A multi-line record cut by the end of a block is
held back and emitted at the start of the next block.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from backfill.config import Settings
from backfill.mapping.compiler import CompiledMapping, RecordMapper
from backfill.mapping.csvrecords import (
    Dialect,
    Parser,
    Unit,
    find_resume_point,
    frame,
    header_in,
)
from backfill.mapping.refusals import RULE_FAILURES, Dropped, RecordRefused, rule_failure
from backfill.mapping.spec import MappingSpec, load_spec
from backfill.schema import Kind, invalid_utf8, undecodable
from backfill.sources import START, Block, BlockTransform, Problem, Source, open_blocks

__all__ = ["MappingTransform", "Observations", "build_transform", "map_file_blocks"]

_decode_json = msgspec.json.decode


@dataclass(slots=True)
class Observations:
    """What `preview` wants to show besides the mapped lines, by first line index: each
    record's parsed source (a column -> value dict for CSV, the decoded JSON value).
    Collected only when asked for (not on a run)."""

    sources: dict[int, Any] = field(default_factory=dict)


def build_transform(settings: Settings) -> BlockTransform | None:
    """None when the input is already Miso JSON lines (no [mapping] table)."""
    if not settings.mapping:
        return None
    spec = load_spec(settings.mapping, settings.kind, settings.config_file)
    return MappingTransform(spec, settings.kind, max_line_bytes=settings.max_line_bytes)


class MappingTransform:
    """The compiled mapping, applied file after file (a file's state: _CsvFile, _JsonFile)."""

    def __init__(self, spec: MappingSpec, kind: Kind, *, max_line_bytes: int = 1 << 20) -> None:
        self.spec = spec
        self.compiled = CompiledMapping(spec, kind)
        self.max_line_bytes = max_line_bytes
        self.dialect = Dialect(spec.csv_delimiter, spec.csv_quote)
        self._json_mapper: RecordMapper | None = None

    async def blocks(
        self, source: Source, blocks: AsyncIterator[Block], observe: Observations | None = None
    ) -> AsyncIterator[Block]:
        mapper: _JsonFile | _CsvFile = (
            _CsvFile(self, source, observe) if self.spec.is_csv else _JsonFile(self, observe)
        )
        resumed = False
        async for block in blocks:
            if not resumed:
                resumed = True
                if block.first > 0 and isinstance(mapper, _CsvFile):
                    await mapper.resume_at(block.first)
            yield mapper.feed(block)
        tail = mapper.finish()
        if tail is not None:
            yield tail

    def json_mapper(self) -> RecordMapper:
        if self._json_mapper is None:
            self._json_mapper = self.compiled.for_json()
        return self._json_mapper


def _refuse(block: Block, slot: int, exc: Exception, raw: bytes) -> None:
    """A record the mapping dropped on purpose (filtered, the rule as its reason) or refused."""
    if isinstance(exc, Dropped):
        block.filter(slot, str(exc))
    else:
        reason = str(exc) if isinstance(exc, RecordRefused) else rule_failure(exc)
        block.reject(slot, reason, raw)


class _JsonFile:
    """JSON lines of any shape: one object per line."""

    def __init__(self, transform: MappingTransform, observe: Observations | None) -> None:
        self.map = transform.json_mapper()
        self.observe = observe

    def feed(self, block: Block) -> Block:
        first, mapper, observe = block.first, self.map, self.observe
        mapped = Block(
            [b""] * len(block.lines),
            first,
            block.offset,
            block.raw_bytes,
            dict(block.problems),
            block.warning,
            block.stored_lengths(),
        )
        out = mapped.lines
        for slot, raw in enumerate(block.lines):
            if not raw or raw.isspace():
                continue
            try:
                source = _decode_json(raw)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                mapped.reject(slot, undecodable(raw) or "malformed JSON", raw)
                continue
            if observe is not None:
                observe.sources[first + slot] = source
            try:
                if type(source) is not dict:
                    raise RecordRefused(f"expected a JSON object, got {_json_kind(source)}")
                out[slot] = mapper(source)
            except (Dropped, RecordRefused, *RULE_FAILURES) as exc:
                _refuse(mapped, slot, exc, raw)
        return mapped

    def finish(self) -> Block | None:
        return None


def _json_kind(value: Any) -> str:
    if type(value) is list:
        return "an array"
    if type(value) is str:
        return "a string"
    return "null" if value is None else f"the value {msgspec.json.encode(value).decode()}"


class _CsvFile:
    """CSV/TSV with a header row: framing across blocks, the header, then rows."""

    def __init__(
        self, transform: MappingTransform, source: Source, observe: Observations | None
    ) -> None:
        self.t = transform
        self.source = source
        self.observe = observe
        self.parser = Parser(transform.dialect)
        self.quote = transform.dialect.quote.encode()
        self.columns: list[str] = []
        self.map: RecordMapper | None = None
        self.skip_to = 0  # lines before this index continue a record begun before the resume
        # the unfinished record carried to the next block: lines, lengths, first, offset
        self.held: list[bytes] = []
        self.held_lengths: list[int] = []
        self.held_first = 0
        self.held_offset = 0

    async def resume_at(self, line: int) -> None:
        point = await find_resume_point(
            self.source, line, self.t.dialect, self.t.max_line_bytes, self.t.max_line_bytes
        )
        self._bind(point.columns)
        self.skip_to = point.first_record

    def _bind(self, columns: list[str]) -> None:
        self.columns = columns
        self.map = self.t.compiled.for_csv(columns, self.source.name)

    def feed(self, block: Block) -> Block:
        lines, lengths = block.lines, block.stored_lengths()
        first, offset = block.first, block.offset
        if self.held:
            lines = self.held + lines
            lengths = self.held_lengths + lengths
            first, offset = self.held_first, self.held_offset
        return self._map_lines(
            lines, lengths, first, offset, block.problems, block.raw_bytes, block.warning, False
        )

    def finish(self) -> Block | None:
        if not self.held:
            return None
        lines, lengths = self.held, self.held_lengths
        return self._map_lines(lines, lengths, self.held_first, self.held_offset, {}, 0, None, True)

    def _map_lines(
        self,
        lines: list[bytes],
        lengths: list[int],
        first: int,
        offset: int,
        problems: Mapping[int, Problem],
        raw_bytes: int,
        warning: str | None,
        final: bool,
    ) -> Block:
        begin = min(max(self.skip_to - first, 0), len(lines))
        spans, cut = frame(
            lines,
            first,
            problems,
            self.quote,
            final=final,
            max_bytes=self.t.max_line_bytes,
            begin=begin,
            opens=self.parser.opens_quote,
        )
        found = {i: p for i, p in problems.items() if i < first + cut}
        if self.map is None:
            name = self.source.name
            header = header_in(self.parser, lines, spans, begin, cut, first, found, name)
            if header is not None:
                self._bind(header[0])
            begin = header[1] if header is not None else cut
        mapped = Block([b""] * cut, first, offset, raw_bytes, found, warning, lengths[:cut])
        if self.map is not None:
            self._map_records(self.map, lines, spans, begin, cut, mapped)
        if cut < len(lines):
            self.held, self.held_lengths = lines[cut:], lengths[cut:]
            self.held_first = first + cut
            self.held_offset = offset + sum(lengths[:cut]) + cut
        else:
            self.held, self.held_lengths = [], []
        return mapped

    def _map_records(
        self,
        mapper: RecordMapper,
        lines: list[bytes],
        spans: Mapping[int, Unit],
        begin: int,
        cut: int,
        mapped: Block,
    ) -> None:
        """The hot loop. Rows without quotes are split and mapped at once; quoted ones are
        parsed together after the loop (one csv reader per block)."""
        observe, columns, first, out = self.observe, self.columns, mapped.first, mapped.lines
        quote, delimiter = self.parser.quote, self.parser.delimiter
        quoted: list[tuple[int, bytes, str]] = []
        end = begin  # the end of the record being skipped over
        for slot in range(begin, cut):
            if slot < end:
                continue
            raw = lines[slot]
            unit = spans.get(slot) if spans else None
            if unit is not None:
                end = unit.end
                if unit.broken is not None:
                    mapped.reject(slot, unit.broken, raw)
                    continue
                raw = b"\n".join(lines[slot:end])
            if not raw or raw.isspace():
                continue  # blank, or a line the reader could not deliver (a problem already)
            try:
                text = raw.decode()
            except UnicodeDecodeError as exc:
                mapped.reject(slot, invalid_utf8(exc), raw)
                continue
            if quote and quote in text:
                quoted.append((slot, raw, text))
                continue
            row = text.rstrip("\r").split(delimiter)
            if observe is not None:
                observe.sources[first + slot] = dict(zip(columns, row, strict=False))
            try:
                out[slot] = mapper(row)
            except (Dropped, RecordRefused, *RULE_FAILURES) as exc:
                _refuse(mapped, slot, exc, raw)
        if quoted:
            self._map_quoted(mapper, quoted, mapped)

    def _map_quoted(
        self, mapper: RecordMapper, quoted: list[tuple[int, bytes, str]], mapped: Block
    ) -> None:
        observe, out = self.observe, mapped.lines
        rows = self.parser.parse_many([text for _, _, text in quoted])
        for (slot, raw, _), row in zip(quoted, rows, strict=True):
            if isinstance(row, str):
                mapped.reject(slot, row, raw)
                continue
            if observe is not None:
                observe.sources[mapped.first + slot] = dict(zip(self.columns, row, strict=False))
            try:
                out[slot] = mapper(row)
            except (Dropped, RecordRefused, *RULE_FAILURES) as exc:
                _refuse(mapped, slot, exc, raw)


async def map_file_blocks(
    transform: MappingTransform, source: Source, *, max_line_bytes: int = 1 << 20
) -> AsyncIterator[Block]:
    """Convenience for tools and tests: a whole source, read and mapped."""
    blocks = open_blocks(source, START, [transform], max_line_bytes=max_line_bytes)
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            yield block
