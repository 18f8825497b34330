"""Peak RSS of the engine on a small and a large input: bounded queues mean it must not grow.

The engine holds at most about 2 x concurrency batches, whatever the input length. Batches
never span files, so how full they get depends on the records per file: both inputs have the
same records per file (fewer days for the smaller one), and only their length differs. RSS is
also sampled every 50 ms from /proc: the median of the second half of each run is its
plateau, and the figure shows RSS against the share of the run done.

Gzip bombs (a small file that inflates a thousandfold) get their own points: gzip is inflated
one bounded piece at a time, so their peak must stay under the same limit.
"""

from __future__ import annotations

import gzip
import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.contenders import run_engine
from benchmarks.data import dataset
from benchmarks.harness import BenchError, Server, say, scratch_dir
from benchmarks.plan import Plan
from benchmarks.report import Check, Section, table

LIMIT_MB = 200.0
FLAT_MB = 20.0  # "flat": the longer input may add at most this much to the peak
MB = 1 << 20
REPEATED = b'{"type":"home_page_view","user_id":"u-1","timestamp":"2026-06-01T00:00:00.000Z"}\n'
# name, what is repeated, how often, zlib level: 500 MB of zeros in 2 MB (one endless line,
# dead-lettered) and 200 MB of one valid record in 0.7 MB (2.5M records, each read)
BOMBS = (
    ("500 MB of zeros", b"\0" * MB, 500, 1),
    ("200 MB of one record", REPEATED * 12_500, 200 * MB // len(REPEATED) // 12_500, 9),
)


def _gzip_bomb(path: Path, part: bytes, times: int, level: int) -> Path:
    with gzip.open(path, "wb", compresslevel=level) as fh:
        for _ in range(times):
            fh.write(part)
    return path


def _bombs() -> list[dict[str, Any]]:
    """Peak RSS of a dry run (no server: only reading counts) on each gzip bomb."""
    where = scratch_dir("bombs-")
    runs = []
    try:
        for name, part, times, level in BOMBS:
            bomb = _gzip_bomb(where / "bomb.jsonl.gz", part, times, level)
            say(f"  engine --dry-run on a gzip bomb: {name}")
            run = run_engine(None, [str(bomb)])
            read, lines = len(part) * times, part.count(b"\n") * times or 1
            if run.report["records_read"] != lines:
                raise BenchError(f"{name}: {run.report['records_read']} of {lines} lines read")
            runs.append(
                {
                    "bomb": name,
                    "gzip_mb": round(bomb.stat().st_size / MB, 2),
                    "inflated_mb": round(read / MB),
                    "records_read": run.report["records_read"],
                    "peak_rss_mb": round(run.usage.max_rss_mb, 1),
                    "wall_s": round(run.usage.wall_s, 2),
                }
            )
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return runs


def _run(records: int, days: int) -> dict[str, Any]:
    data = dataset(records, days)
    say(f"  engine on {records:,} records ({records // days:,} per file)")
    with Server() as server:
        run = run_engine(server, [data.pattern], trace_rss=True)
    if run.report["records_accepted"] != records:
        raise BenchError(f"memory run: {run.report['records_accepted']} of {records} accepted")
    u = run.usage
    second_half = [mb for t, mb in u.rss_trace if t >= u.wall_s / 2]
    return {
        "records": records,
        "records_per_file": records // days,
        "peak_rss_mb": round(u.max_rss_mb, 1),
        "plateau_rss_mb": round(statistics.median(second_half), 1) if second_half else None,
        "wall_s": round(u.wall_s, 2),
        "records_per_s": round(records / u.wall_s),
        "cpu_s": round(u.cpu_s, 2),
        "rss_trace": [(round(t, 2), round(mb, 1)) for t, mb in u.rss_trace],
    }


def section(plan: Plan) -> Section:
    runs = [_run(records, days) for records, days in plan.memory_runs]
    small, large = runs[0], runs[-1]
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    rows = [
        (
            r["records"],
            r["records_per_file"],
            r["peak_rss_mb"],
            r["plateau_rss_mb"],
            r["records_per_s"],
            r["wall_s"],
        )
        for r in runs
    ]
    headers = ["records", "per file", "peak RSS MB", "plateau MB", "records/s", "wall s"]
    markdown = "\n".join(
        [
            "Engine with its defaults against the count-only server; peak RSS from os.wait4, "
            "plateau = median RSS over the second half of the run.",
            "",
            table(headers, rows),
            "",
            f"Peak RSS changes by {growth:+.1f} MB from {small['records']:,} to "
            f"{large['records']:,} records. Figure: memory.png.",
        ]
    )
    bombs = _bombs()
    bomb_headers = ["gzip bomb", "gzip MB", "inflated MB", "records read", "peak RSS MB", "wall s"]
    markdown += "\n\nGzip bombs, `backfill run --dry-run`:\n\n" + table(
        bomb_headers, [tuple(b.values()) for b in bombs]
    )
    peak = max(r["peak_rss_mb"] for r in runs)
    bomb_peak = max(b["peak_rss_mb"] for b in bombs)
    checks = [
        Check(
            f"gzip bomb peak RSS < {LIMIT_MB:.0f} MB", f"{bomb_peak:.0f} MB", bomb_peak < LIMIT_MB
        ),
        Check(f"engine peak RSS < {LIMIT_MB:.0f} MB", f"{peak:.0f} MB", peak < LIMIT_MB),
        Check(
            f"peak RSS flat from {small['records']:,} to {large['records']:,} records",
            f"{growth:+.1f} MB" + (" (quick run: small sizes)" if plan.quick else ""),
            abs(growth) <= FLAT_MB,
        ),
    ]
    return Section(
        "memory",
        "Memory",
        markdown,
        {"runs": runs, "growth_mb": round(growth, 1), "bombs": bombs},
        checks,
    )
