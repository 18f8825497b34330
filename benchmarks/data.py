"""Generated logs for the benchmarks, made once and reused while their manifest matches.

`dataset(n)` is `backfill generate --records n --days 90 --seed 7 --no-catalog` into
`benchmarks/.data/logs-<n>/` (gzip JSON lines, one file per day, about 350 bytes a record).
The uncompressed size, which MB/s is computed from, is measured once and kept beside the
manifest in `bench-scan.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from backfill.generate import load_manifest
from backfill.sources.reader import gzip_decompressor
from benchmarks.harness import DATA, BenchError, backfill, run_measured, say

SEED: Final = 7
DAYS: Final = 90
SCAN: Final = "bench-scan.json"
PATTERN: Final = "interactions-*.jsonl.gz"


@dataclass(frozen=True, slots=True)
class Dataset:
    dir: Path
    records: int
    raw_bytes: int  # uncompressed JSON lines, newlines included
    disk_bytes: int

    @property
    def files(self) -> list[Path]:
        return sorted(self.dir.glob(PATTERN))

    def first_files(self, records: int) -> list[Path]:
        """The first files holding at least `records` records (all of them if fewer)."""
        counts = {f.path: f.records for f in load_manifest(self.dir).files}
        chosen: list[Path] = []
        total = 0
        for path in self.files:
            if total >= records:
                break
            chosen.append(path)
            total += counts.get(path.name, 0)
        return chosen

    @property
    def pattern(self) -> str:
        """The glob the engine is given (it expands it itself, sorted)."""
        return str(self.dir / PATTERN)


def dataset(records: int, days: int = DAYS) -> Dataset:
    """The generated logs of `records` interactions over `days` day files; generated if
    missing or stale. Fewer days make bigger files (the engine's batches never span files)."""
    out = DATA / (f"logs-{records}" if days == DAYS else f"logs-{records}-{days}d")
    if not _matches(out, records, days):
        shutil.rmtree(out, ignore_errors=True)
        say(f"generating {records:,} records into {out} (once; reused by later runs)")
        cmd = backfill(
            "generate", "--out", str(out), "--days", str(days), "--records", str(records),
            "--seed", str(SEED), "--no-catalog",
        )  # fmt: skip
        usage = run_measured(cmd)
        if usage.exit_code != 0:
            raise BenchError(f"backfill generate failed:\n{usage.stderr[-2000:]}")
        say(f"  generated in {usage.wall_s:.1f} s")
    return _scanned(out, records)


def _matches(out: Path, records: int, days: int) -> bool:
    try:
        manifest = load_manifest(out)
    except (OSError, ValueError):
        return False
    return (
        manifest.records == records
        and manifest.seed == SEED
        and manifest.days == days
        and manifest.bad_fraction == 0.0
        and manifest.format == "jsonl.gz"
        and all((out / f.path).exists() for f in manifest.files)
    )


def _scanned(out: Path, records: int) -> Dataset:
    files = sorted(out.glob(PATTERN))
    disk = sum(p.stat().st_size for p in files)
    scan = out / SCAN
    try:
        known = json.loads(scan.read_text())
        if known["disk_bytes"] == disk and known["records"] == records:
            return Dataset(out, records, int(known["raw_bytes"]), disk)
    except (OSError, ValueError, KeyError):
        pass
    started = time.perf_counter()
    raw = sum(len(piece) for path in files for piece in inflate(path))
    say(f"  measured {raw / 1e6:.0f} MB uncompressed in {time.perf_counter() - started:.1f} s")
    scan.write_text(json.dumps({"records": records, "disk_bytes": disk, "raw_bytes": raw}))
    return Dataset(out, records, raw, disk)


def inflate(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The uncompressed bytes of a (possibly multi-member) gzip file, piece by piece, by the
    engine's own inflater (`backfill.sources.reader.INFLATER`): the ceilings' unavoidable
    work is the engine's."""
    with open(path, "rb") as fh:
        d = gzip_decompressor()
        while data := fh.read(chunk):
            while data:
                yield d.decompress(data)
                data = b""
                if d.eof:
                    data, d = d.unused_data, gzip_decompressor()
        yield d.flush()


def write_slice(source: Dataset, records: int, out: Path) -> int:
    """The first `records` lines of `source` as one plain JSON-lines file; returns the count.

    The latency sweep needs inputs of exact sizes (a few requests per worker), finer than a
    day file; copying a prefix is much faster than generating.
    """
    written = 0
    carry = b""
    with open(out, "wb") as fh:
        for path in source.files:
            for piece in inflate(path):
                lines = (carry + piece).split(b"\n")
                carry = lines.pop()
                take = lines[: records - written]
                if take:
                    fh.write(b"\n".join(take) + b"\n")
                    written += len(take)
                if written >= records:
                    return written
    return written
