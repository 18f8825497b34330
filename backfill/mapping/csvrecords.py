"""CSV/TSV records out of physical lines: framing by quote parity, parsing with the csv module.

The reader hands over physical lines; a CSV record is one line, or several when a quoted value
holds a line break (RFC 4180). A record is complete at the first line where the count of quote
characters so far is even, since a quote inside a quoted value is written doubled. Counting
quotes in bytes is cheap, so framing never decodes; only complete records are parsed. A line
with an odd count is asked to the csv module (strict) before it opens a multi-line record: a
stray quote inside an unquoted value (`24" screen`) is just a character to it.

A quote that is never closed would swallow the rest of the file: a record that grows past
`max_bytes`, meets a line the reader could not deliver, or is still open at the end of the
file is given up on: its first line alone is reported, and framing goes on with the next line.

A resumed file starts at a line that may continue a record begun before it (a batch can end
right after a multi-line record's first line): `find_resume_point` replays the framing from
the top of the file, reading but not parsing, to know where the next record starts.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from backfill.errors import UsageError
from backfill.sources import START, Problem, Source, open_blocks

UNTERMINATED: Final = (
    "unterminated quoted value: a quote opened on this line is never closed "
    "(the lines after it are read as new records)"
)


class Unit(NamedTuple):
    """Lines [start, end) of a block (block-relative) hold one record, or a broken one."""

    start: int
    end: int
    broken: str | None = None


def frame(
    lines: list[bytes],
    first: int,
    problems: Mapping[int, Problem],
    quote: bytes,
    *,
    final: bool,
    max_bytes: int,
    begin: int = 0,
    opens: Callable[[bytes], bool] | None = None,
) -> tuple[dict[int, Unit], int]:
    """The records of `lines` that are not one line each, by start; and where an unfinished
    last record starts (len(lines) if none). Every other line before that is one record.

    Parity only changes on a line with an odd count of quotes, so a multi-line record runs
    from one such line to the next: only those lines are looked at. `final`: no more lines
    will come, so an open record is broken rather than held back. Lines before `begin` are
    not records (they end one that began before a resume). `opens` tells whether an odd line
    really leaves a quoted value open: a stray quote inside an unquoted value (`5" screen`)
    does not, for the csv module, so that line is a record of its own.
    """
    n = len(lines)
    spans: dict[int, Unit] = {}
    if not quote or quote not in b"\n".join(lines[begin:]):
        return spans, n
    odd = [i for i in range(begin, n) if lines[i].count(quote) & 1]
    k = 0
    while k < len(odd):
        i = odd[k]
        if opens is not None and not opens(lines[i]):
            k += 1
            continue
        j = odd[k + 1] if k + 1 < len(odd) else n - 1
        size = sum(map(len, lines[i : j + 1])) + j - i
        whole = size <= max_bytes and not (
            problems and any(first + x in problems for x in range(i + 1, j + 1))
        )
        if k + 1 < len(odd) and whole:
            spans[i] = Unit(i, j + 1)
            k += 2
            continue
        if k + 1 == len(odd) and whole and not final:
            return spans, i
        spans[i] = Unit(i, i + 1, UNTERMINATED)
        k += 1
    return spans, n


@dataclass(frozen=True, slots=True)
class Dialect:
    delimiter: str
    quote: str  # "" for none


class Parser:
    """Rows out of record texts with the csv module: one reader per block for the records
    that hold a quote (the others are plainly split by the caller), one per record when a
    record is malformed."""

    def __init__(self, dialect: Dialect) -> None:
        self.delimiter = dialect.delimiter
        self.quote = dialect.quote
        self._options: dict[str, Any] = {
            "delimiter": dialect.delimiter,
            "quotechar": dialect.quote or None,
            "quoting": csv.QUOTE_MINIMAL if dialect.quote else csv.QUOTE_NONE,
            "doublequote": True,
        }

    def opens_quote(self, line: bytes) -> bool:
        """Whether `line` ends inside a quoted value, as the csv module reads it."""
        try:
            list(csv.reader([line.decode("utf-8", "replace")], **self._options, strict=True))
        except csv.Error as exc:
            return "unexpected end of data" in str(exc)
        return False

    def parse_many(self, texts: list[str]) -> list[list[str] | str]:
        """A row, or why the record is malformed, for each text (in order)."""
        try:
            rows: list[list[str] | str] = list(csv.reader(texts, **self._options, strict=False))
        except csv.Error:
            rows = []
        if len(rows) == len(texts):
            return rows
        return [self.parse_one(t) for t in texts]

    def parse_one(self, text: str) -> list[str] | str:
        try:
            rows = list(csv.reader([text], **self._options, strict=False))
        except csv.Error as exc:
            return f"malformed CSV: {exc}"
        if len(rows) != 1:
            return "malformed CSV: a line break outside quotes"
        return rows[0]


@dataclass(slots=True)
class ResumePoint:
    """What resuming at `start_line` needs: the header, and the first record start from there
    on (the lines in between continue a record that began before `start_line`)."""

    columns: list[str]
    first_record: int


async def find_resume_point(
    source: Source, start_line: int, dialect: Dialect, max_bytes: int, max_line_bytes: int
) -> ResumePoint:
    """Replays the framing from the top of the file (reading it, not parsing it)."""
    quote = dialect.quote.encode()
    parser = Parser(dialect)
    columns: list[str] | None = None
    held: list[bytes] = []
    held_first = 0
    blocks = open_blocks(source, START, max_line_bytes=max_line_bytes)
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            lines, first = block.lines, block.first
            if held:
                lines, first = held + lines, held_first
            spans, cut = frame(
                lines,
                first,
                block.problems,
                quote,
                final=False,
                max_bytes=max_bytes,
                opens=parser.opens_quote,
            )
            if columns is None:
                header = header_in(parser, lines, spans, 0, cut, first, block.problems, source.name)
                columns = header[0] if header else None
            at = start_line - first
            if columns is not None and at < cut:
                for unit in spans.values():
                    if unit.start < at < unit.end:
                        return ResumePoint(columns, first + unit.end)
                return ResumePoint(columns, start_line)
            held, held_first = lines[cut:], first + cut
    if columns is None:
        raise UsageError(f"{source.name}: no header row: cannot resume a CSV file without one")
    return ResumePoint(columns, start_line)


def header_in(
    parser: Parser,
    lines: list[bytes],
    spans: Mapping[int, Unit],
    begin: int,
    cut: int,
    first: int,
    problems: Mapping[int, Problem],
    name: str,
) -> tuple[list[str], int] | None:
    """The column names of the first non-blank record among lines [begin, cut), and the
    line after it; None when they are all blank."""
    slot = begin
    while slot < cut:
        unit = spans.get(slot) or Unit(slot, slot + 1)
        raw = b"\n".join(lines[unit.start : unit.end])
        problem = problems.get(first + slot)
        if problem is not None or unit.broken is not None or (raw and not raw.isspace()):
            return read_header(parser, raw, unit, problem, name, first + slot), unit.end
        slot = unit.end
    return None


def read_header(
    parser: Parser, raw: bytes, unit: Unit, problem: Problem | None, name: str, line: int
) -> list[str]:
    """Column names from the header record (of source `name`); UsageError if there is no
    usable header."""
    where = f"{name} line {line + 1}"
    if problem is not None and not problem.filtered:
        raise UsageError(f"{where}: cannot read the CSV header: {problem.reason}")
    if unit.broken is not None:
        raise UsageError(f"{where}: cannot read the CSV header: {unit.broken}")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{where}: the CSV header is not valid UTF-8 text") from None
    row = parser.parse_one(text)
    if isinstance(row, str):
        raise UsageError(f"{where}: cannot read the CSV header: {row}")
    return [name.strip() for name in row]
