"""Scaling: `--processes 2` against one process on the same input and server.

Each run is `backfill run` as a user starts it, measured as one child: `os.wait4` of the
parent returns the CPU seconds of the parent and of its reaped workers together, and the
largest peak RSS of any one of them (the kernel keeps the maximum over a process and its
waited-for children), which is the per-process figure the target speaks of. The count-only
server shares the machine's cores, as in the side-by-side table. Alone:
`python -m benchmarks.scaling` (`BENCH_QUICK=1` for a small input).
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.contenders import EngineRun, run_engine
from benchmarks.data import Dataset, dataset
from benchmarks.harness import BenchError, Server, say
from benchmarks.plan import Plan, current
from benchmarks.report import Check, Section, table

PROCESSES = (1, 2)
SPEEDUP_TARGET = 1.5
CPU_TOLERANCE = 0.10
RSS_LIMIT_MB = 200


def section(plan: Plan, data: Dataset | None = None) -> Section:
    data = data or dataset(plan.main_records)
    runs: dict[int, EngineRun] = {}
    with Server() as server:
        for n in PROCESSES:
            say(f"  --processes {n}")
            server.reset()
            run = run_engine(server, [data.pattern], "--processes", str(n))
            if run.usage.exit_code != 0 or server.received() != data.records:
                raise BenchError(
                    f"--processes {n} exited {run.usage.exit_code}, the server received "
                    f"{server.received():,} of {data.records:,} records:\n"
                    + run.usage.stderr[-2000:]
                )
            runs[n] = run
    return _section(data, runs)


def _section(data: Dataset, runs: dict[int, EngineRun]) -> Section:
    rate = {n: data.records / r.usage.wall_s for n, r in runs.items()}
    cpu = {n: r.usage.cpu_s / data.records * 1e6 for n, r in runs.items()}  # µs per record
    speedup = rate[2] / rate[1]
    cpu_ratio = cpu[2] / cpu[1]
    rows: list[tuple[Any, ...]] = [
        (f"--processes {n}", round(rate[n]), round(r.usage.wall_s, 2), round(cpu[n], 2),
         round(r.usage.max_rss_mb))
        for n, r in runs.items()
    ]  # fmt: skip
    markdown = "\n".join(
        [
            f"{data.records:,} records, count-only server on the same cores.",
            "",
            table(
                ["run", "records/s", "wall s", "CPU µs / record", "peak RSS MB (any one process)"],
                rows,
            ),
            "",
            f"Speed-up with 2 processes: {speedup:.2f}x; CPU per record {cpu_ratio:.2f}x one "
            "process's.",
        ]
    )
    peak = max(r.usage.max_rss_mb for r in runs.values())
    checks = [
        Check(f"--processes 2 >= {SPEEDUP_TARGET}x one process", f"{speedup:.2f}x",
              speedup >= SPEEDUP_TARGET),
        Check(f"CPU per record with 2 processes within {CPU_TOLERANCE:.0%} of one",
              f"{cpu_ratio - 1:+.1%}", abs(cpu_ratio - 1) <= CPU_TOLERANCE),
        Check(f"peak RSS per process < {RSS_LIMIT_MB} MB", f"{peak:.0f} MB", peak < RSS_LIMIT_MB),
    ]  # fmt: skip
    out = {
        "records": data.records,
        "records_per_s": {str(n): round(v, 1) for n, v in rate.items()},
        "cpu_us_per_record": {str(n): round(v, 3) for n, v in cpu.items()},
        "speedup": round(speedup, 3),
        "cpu_ratio": round(cpu_ratio, 3),
        "peak_rss_mb": round(peak, 1),
        "wall_s": {str(n): round(r.usage.wall_s, 3) for n, r in runs.items()},
    }
    return Section("scaling", "Scaling: processes", markdown, out, checks)


def main() -> int:
    try:
        s = section(current())
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    print(f"## {s.title}\n\n{s.markdown}\n")
    for check in s.checks:
        print(f"- {check.target}: {check.measured} ({'pass' if check.passed else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
