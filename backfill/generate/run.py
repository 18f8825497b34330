"""One generation run: catalog files, one interaction file per day, the manifest.

Memory is bounded by one minute of lines (flushed in ~1 MiB pieces) plus the open sessions and
the list of defect positions; nothing grows with `--records` except that list.
Independent random streams (catalog, time, traffic, defects) keep a bad run's valid lines
identical to the clean run's with the same seed: defects replace lines, they never shift them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import msgspec

from backfill.generate import defects as breaks
from backfill.generate.catalog import Catalog, user_records
from backfill.generate.gaps import GapStream
from backfill.generate.model import (
    LINE_DEFECTS,
    MANIFEST_NAME,
    FileKind,
    FileSummary,
    GenerateConfig,
    GenerateSummary,
    defect_kinds,
    load_manifest,
)
from backfill.generate.output import Sink, cut_gzip, write_empty
from backfill.generate.pii import PiiStream
from backfill.generate.seasonality import (
    allocate,
    day_weights,
    minute_counts,
    minute_heads,
    minute_offsets,
)
from backfill.generate.sessions import Traffic

FLUSH_BYTES: Final = 1 << 20
FLUSH_LINES: Final = 4096  # about 1.4 MiB of lines
NOT_A_LINE: Final = frozenset({"empty_file", "truncated_gzip"})  # tags with no line to count


class DefectStream(GapStream):
    """Which lines to break (geometric gaps), kinds dealt in shuffled rounds."""

    def __init__(self, fraction: float, rng: random.Random) -> None:
        self._deck: list[str] = []
        super().__init__(fraction, rng)

    def kind(self) -> str:
        if not self._deck:
            self._deck = list(LINE_DEFECTS)
            self._rng.shuffle(self._deck)
        return self._deck.pop()

    def apply(self, line: str) -> tuple[str, str]:
        kind = self.kind()
        return breaks.BREAK[kind](line, self._rng), kind

    def truncate(self, line: str) -> str:
        return breaks.truncate_line(line, self._rng)


@dataclass(slots=True)
class FilePlan:
    """Which file-level defects a run has, decided before writing (empty when clean)."""

    truncated_line_day: int = -1
    truncated_gzip_day: int = -1
    empty_after_day: int = -1

    @classmethod
    def choose(cls, config: GenerateConfig, per_day: list[int], rng: random.Random) -> FilePlan:
        if config.bad_fraction <= 0.0:
            return cls()
        days = list(range(config.days))
        rng.shuffle(days)
        plan = cls(empty_after_day=days[0])
        with_lines = [d for d in days if per_day[d] >= 2]
        if with_lines:
            plan.truncated_line_day = with_lines[0]
        if config.format == "jsonl.gz" and len(with_lines) >= 2:
            plan.truncated_gzip_day = with_lines[1]
        return plan


@dataclass(slots=True)
class DayResult:
    records: int = 0
    defects: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, kind)
    pii: list[tuple[int, str]] = field(default_factory=list)  # (1-based line, kind@field)


def write_day(
    sink: Sink,
    day: date,
    records: int,
    traffic: Traffic,
    time_rng: random.Random,
    defects: DefectStream,
    truncate_last: bool,
    pii: PiiStream | None = None,
) -> DayResult:
    """A day of lines, minute by minute, defects swapped in on the way, then PII mixed into
    lines that are not defects."""
    result = DayResult(records)
    found, leaked = result.defects, result.pii
    heads = minute_heads(day)
    buf: list[str] = []
    done = 0  # lines of the day before `buf`
    for minute, count in enumerate(minute_counts(records, time_rng)):
        if not count:
            continue
        if len(buf) >= FLUSH_LINES:  # before adding, so the day's last line stays in buf
            sink.write("".join(buf).encode("utf-8", "surrogateescape"))
            done += len(buf)
            buf = []
        traffic.set_rate(count)
        first = len(buf)
        buf += traffic.lines(heads[minute], minute_offsets(count, time_rng))
        broken: set[int] = set()
        for index in defects.positions(first, len(buf)):
            buf[index], kind = defects.apply(buf[index])
            found.append((done + index + 1, kind))
            broken.add(index)
        if pii is not None:
            for index in pii.positions(first, len(buf)):
                if index not in broken:
                    buf[index], tag = pii.apply(buf[index])
                    leaked.append((done + index + 1, tag))
    if truncate_last and buf:
        if found and found[-1][0] == records:
            found.pop()
        if leaked and leaked[-1][0] == records:
            leaked.pop()
        buf[-1] = defects.truncate(buf[-1])
        found.append((records, "truncated_line"))
    sink.write("".join(buf).encode("utf-8", "surrogateescape"))
    return result


def _write_records(path: Path, gzipped: bool, records: Iterable[dict[str, Any]]) -> int:
    encode = msgspec.json.Encoder().encode
    count, buf = 0, bytearray()
    with Sink(path, gzipped) as sink:
        for record in records:
            buf += encode(record)
            buf += b"\n"
            count += 1
            if len(buf) >= FLUSH_BYTES:
                sink.write(bytes(buf))
                buf.clear()
        sink.write(bytes(buf))
    return count


def _catalog_files(
    config: GenerateConfig, out: Path, catalog: Catalog, rng: random.Random
) -> Iterator[FileSummary]:
    parts: tuple[tuple[FileKind, Iterable[dict[str, Any]]], ...] = (
        ("products", catalog.records(config.start, rng)),
        ("users", user_records(config.user_count, config.start, rng)),
    )
    for kind, records in parts:
        name = f"{kind}.{config.format}"
        count = _write_records(out / name, config.format == "jsonl.gz", records)
        size = (out / name).stat().st_size
        yield FileSummary(path=name, kind=kind, records=count, valid=count, bytes=size)


def _summarize(
    name: str, result: DayResult, size: int, lost: int = 0, cut: bool = False
) -> FileSummary:
    """`cut`: the file ends where a reader stops (empty, truncated gzip), so say what it keeps."""
    counts: dict[str, int] = {}
    for _, kind in result.defects:
        counts[kind] = counts.get(kind, 0) + 1
    pii: dict[str, int] = {}
    for _, tag in result.pii:
        pii[tag] = pii.get(tag, 0) + 1
    valid = result.records - sum(n for kind, n in counts.items() if kind not in NOT_A_LINE)
    return FileSummary(
        path=name,
        kind="interactions",
        records=result.records,
        valid=valid,
        bytes=size,
        defects=dict(sorted(counts.items())),
        recoverable_valid=valid if cut else None,
        lost_records=lost,
        pii=dict(sorted(pii.items())),
    )


def _cut_stream(path: Path, result: DayResult, rng: random.Random) -> int:
    """Cut the gzip stream; keep what a reader recovers. Returns the records lost."""
    readable = cut_gzip(path, rng)
    lost = result.records - readable
    result.records = readable
    result.defects = [d for d in result.defects if d[0] <= readable]
    result.pii = [d for d in result.pii if d[0] <= readable]
    result.defects.append((readable + 1, "truncated_gzip"))
    return lost


def _interaction_files(
    config: GenerateConfig, out: Path, traffic: Traffic, time_rng: random.Random
) -> Iterator[tuple[FileSummary, DayResult]]:
    """Each day's file (and the empty file, when planned) with its defects, in date order."""
    defect_rng = random.Random(f"{config.seed}/defects")
    per_day = allocate(config.records, day_weights(config.start, config.days, time_rng), time_rng)
    plan = FilePlan.choose(config, per_day, defect_rng)
    stream = DefectStream(config.bad_fraction, defect_rng)
    pii_rng = random.Random(f"{config.seed}/pii")
    pii = PiiStream(config.pii_rate, pii_rng) if config.pii_rate else None
    for i, records in enumerate(per_day):
        day = config.start + timedelta(days=i)
        name = f"interactions-{day.isoformat()}.{config.format}"
        with Sink(out / name, config.format == "jsonl.gz") as sink:
            last = i == plan.truncated_line_day
            result = write_day(sink, day, records, traffic, time_rng, stream, last, pii)
        cut = i == plan.truncated_gzip_day
        lost = _cut_stream(out / name, result, defect_rng) if cut else 0
        size = (out / name).stat().st_size
        yield _summarize(name, result, size, lost, cut), result
        if i == plan.empty_after_day:
            empty = f"interactions-{day.isoformat()}-empty.{config.format}"
            write_empty(out / empty)
            nothing = DayResult(0, [(0, "empty_file")])
            yield _summarize(empty, nothing, 0, cut=True), nothing


def generate(config: GenerateConfig) -> GenerateSummary:
    """Write the files `config` describes and return (and write) their manifest."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_output(out)
    seed = config.seed
    catalog = Catalog(config.product_count, random.Random(f"{seed}/products"))
    traffic = Traffic(catalog, config.user_count, random.Random(f"{seed}/traffic"))
    files: list[FileSummary] = []
    if config.catalog:
        files += _catalog_files(config, out, catalog, random.Random(f"{seed}/catalog"))
    defect_lines: list[tuple[str, int, str]] = []
    pii_lines: list[tuple[str, int, str]] = []
    for summary, day in _interaction_files(config, out, traffic, random.Random(f"{seed}/time")):
        files.append(summary)
        defect_lines += ((summary.path, line, kind) for line, kind in day.defects)
        pii_lines += ((summary.path, line, tag) for line, tag in day.pii)
    return _finish(config, out, files, (defect_lines, pii_lines), catalog)


def _remove_previous_output(out: Path) -> None:
    """Regenerating into a directory replaces the files its manifest lists, and only those:
    a stale day file or empty file from an earlier run would otherwise be read as input."""
    try:
        previous = load_manifest(out / MANIFEST_NAME)
    except (OSError, msgspec.DecodeError):
        return
    for f in previous.files:
        (out / f.path).unlink(missing_ok=True)
    (out / MANIFEST_NAME).unlink()


def _finish(
    config: GenerateConfig,
    out: Path,
    files: list[FileSummary],
    tagged: tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]],
    catalog: Catalog,
) -> GenerateSummary:
    interactions = [f for f in files if f.kind == "interactions"]
    defect_lines, pii_lines = tagged
    totals: dict[str, int] = {}
    pii: dict[str, int] = {}
    for f in interactions:
        for kind, n in f.defects.items():
            totals[kind] = totals.get(kind, 0) + n
        for tag, n in f.pii.items():
            pii[tag] = pii.get(tag, 0) + n
    summary = GenerateSummary(
        seed=config.seed,
        start=config.start,
        days=config.days,
        format=config.format,
        bad_fraction=config.bad_fraction,
        files=files,
        records=sum(f.records for f in interactions),
        valid=sum(f.valid for f in interactions),
        lost_records=sum(f.lost_records for f in interactions),
        defects=dict(sorted(totals.items())),
        defect_lines=defect_lines,
        defect_kinds=defect_kinds(),
        products=len(catalog.ids) if config.catalog else 0,
        users=config.user_count if config.catalog else 0,
        bytes=sum(f.bytes for f in files),
        pii_rate=config.pii_rate,
        pii=dict(sorted(pii.items())),
        pii_lines=pii_lines,
    )
    (out / MANIFEST_NAME).write_bytes(msgspec.json.encode(summary) + b"\n")
    return summary
