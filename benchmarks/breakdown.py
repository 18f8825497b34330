"""Where one process's CPU goes, part by part, without a profiler.

    python -m benchmarks.breakdown [RECORDS]     # default: the plan's main input

Each part of the engine is added one at a time, every stage a process of its own measured
by `os.wait4` (benchmarks.baselines.stages runs the engine's own reader, validator, batcher
and checkpoint; then `backfill run --dry-run`, then `backfill run` against the count-only
server). A part's CPU is the difference between two consecutive stages. Stages alternate
round by round and the least CPU of the rounds is kept, as the machine may be shared.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchmarks.baselines.stages import STAGES
from benchmarks.contenders import run_engine
from benchmarks.data import Dataset, dataset
from benchmarks.harness import BenchError, Server, Usage, module, run_measured, say
from benchmarks.plan import current
from benchmarks.report import table

ROUNDS = 3
PARTS = {  # stage -> what it adds over the previous one
    "imports": "interpreter start-up and imports",
    "inflate": "inflate (gzip, the engine's inflater)",
    "read": "reader: worker-thread hops, line splitting into blocks",
    "validate": "validation (RecordValidator.check)",
    "batch": "batching and body building (BatchBuilder, Target.body)",
    "checkpoint": "checkpoint (two SQLite transactions per batch, fsync)",
    "dry-run": "engine wiring: queue, delivery layers, dead letters, progress, asyncio",
    "server": "HTTP: aiohttp write, response read and classify, loopback socket",
}


def stages(data: Dataset, server: Server) -> dict[str, Callable[[], Usage]]:
    files = [str(p) for p in data.files]

    def stage(name: str) -> Callable[[], Usage]:
        return lambda: run_measured(module("benchmarks.baselines.stages", name, *files))

    def engine(target: Server | None) -> Callable[[], Usage]:
        return lambda: run_engine(target, [data.pattern]).usage

    out = {name: stage(name) for name in STAGES}
    out["dry-run"] = engine(None)
    out["server"] = engine(server)
    return out


def measure(data: Dataset) -> dict[str, float]:
    """The least CPU seconds of each stage over ROUNDS alternating rounds."""
    best: dict[str, float] = {}
    with Server() as server:
        runs = stages(data, server)
        for r in range(ROUNDS):
            say(f"  round {r + 1} of {ROUNDS}")
            for name, run in runs.items():
                server.reset()
                usage = run()
                if usage.exit_code != 0:
                    raise BenchError(f"stage {name} exited {usage.exit_code}:\n{usage.stderr}")
                best[name] = min(best.get(name, usage.cpu_s), usage.cpu_s)
    return best


def render(data: Dataset, best: dict[str, float]) -> str:
    per = {name: cpu / data.records * 1e6 for name, cpu in best.items()}  # µs per record
    rows, previous = [], 0.0
    for name, what in PARTS.items():
        rows.append((what, round(per[name] - previous, 3), round(per[name], 3)))
        previous = per[name]
    floor = per["validate"]
    over = per["server"] - floor
    return "\n".join(
        [
            f"{data.records:,} records; CPU (user + system) of each stage, least of {ROUNDS} "
            "alternating rounds, per record.",
            "",
            table(["part (added by the stage)", "µs / record", "stage total µs / record"], rows),
            "",
            f"The engine costs {per['server']:.2f} µs per record; reading and validating "
            f"({floor:.2f} µs, the engine's own inflater and reader) leave {over:.2f} µs "
            f"({per['server'] / floor:.2f}x) for everything else.",
        ]
    )


def main(argv: list[str]) -> int:
    records = int(argv[0]) if argv else current().main_records
    try:
        data = dataset(records)
        text = render(data, measure(data))
    except BenchError as exc:
        print(f"breakdown: error: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
