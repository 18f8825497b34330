"""Peak RSS of the engine on a small and a large input: bounded queues mean it must not grow.

The engine holds at most about 2 x concurrency batches, whatever the input length. Batches
never span files, so how full they get depends on the records per file: both inputs have the
same records per file (fewer days for the smaller one), and only their length differs. RSS is
also sampled every 50 ms from /proc: the median of the second half of each run is its
plateau, and the figure shows RSS against the share of the run done.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.contenders import run_engine
from benchmarks.data import dataset
from benchmarks.harness import BenchError, Server, say
from benchmarks.plan import Plan
from benchmarks.report import Check, Section, table

LIMIT_MB = 200.0
FLAT_MB = 20.0  # "flat": the longer input may add at most this much to the peak


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
    peak = max(r["peak_rss_mb"] for r in runs)
    checks = [
        Check(f"engine peak RSS < {LIMIT_MB:.0f} MB", f"{peak:.0f} MB", peak < LIMIT_MB),
        Check(
            f"peak RSS flat from {small['records']:,} to {large['records']:,} records",
            f"{growth:+.1f} MB" + (" (quick run: small sizes)" if plan.quick else ""),
            abs(growth) <= FLAT_MB,
        ),
    ]
    return Section(
        "memory", "Memory", markdown, {"runs": runs, "growth_mb": round(growth, 1)}, checks
    )
