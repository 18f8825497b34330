"""Resume: a run stopped at about 90% (SIGINT, as a user presses Ctrl-C), then resumed.

The stop is sent when the server has received about 90% of the records, minus what the
requests in flight will still deliver while the engine drains; the share really done at the
stop is reported, as is the resumed leg's time next to the time of a whole uninterrupted run
of the same input (the engine row of the side-by-side table).
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
from typing import Any

from benchmarks.contenders import EngineRun, run_engine
from benchmarks.data import Dataset
from benchmarks.harness import BenchError, Server, say, scratch_dir
from benchmarks.report import Check, Section, table

STOP_AT = 0.9
TARGET = 0.2
CONCURRENCY, BATCH = 8, 10_000  # the engine's defaults


class _Stopper:
    """Sends SIGINT once the server has received `threshold` records."""

    def __init__(self, server: Server, threshold: int) -> None:
        self.server, self.threshold = server, threshold
        self.sent_at: float | None = None

    def __call__(self, proc: subprocess.Popen[bytes], elapsed: float) -> None:
        if self.sent_at is None and self.server.received() >= self.threshold:
            proc.send_signal(signal.SIGINT)
            self.sent_at = elapsed


def section(data: Dataset, whole: EngineRun) -> Section:
    state = scratch_dir("resume-")
    try:
        with Server() as server:
            threshold = max(int(data.records * STOP_AT) - _in_flight(data) // 2, 1)
            stopper = _Stopper(server, threshold)
            say(f"  interrupted run (SIGINT at {threshold:,} records received)")
            first = run_engine(server, [data.pattern], state=state, on_tick=stopper)
            if stopper.sent_at is None or first.usage.exit_code != 130:
                raise BenchError(
                    f"the run was not interrupted (exit {first.usage.exit_code}); "
                    "the input is too small to stop it at 90%"
                )
            say("  resumed run")
            second = run_engine(server, [data.pattern], state=state)
            received = server.received()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return _section(data, whole, first, second, received)


def _in_flight(data: Dataset) -> int:
    """Records the engine has in flight on average: batches never span files."""
    per_file = data.records / max(len(data.files), 1)
    batch = per_file / math.ceil(per_file / BATCH)
    return int(CONCURRENCY * batch)


def _section(
    data: Dataset, whole: EngineRun, first: EngineRun, second: EngineRun, received: int
) -> Section:
    done = first.report["this_leg"]["records_accepted"] / data.records
    legs = [("whole run, uninterrupted", whole), ("first leg, stopped by SIGINT", first)]
    legs.append(("resumed leg", second))
    rows: list[tuple[Any, ...]] = [
        (
            name,
            run.report["this_leg"]["records_read"],
            run.usage.wall_s,
            run.leg_seconds,
            run.usage.wall_s / whole.usage.wall_s,
        )
        for name, run in legs
    ]
    by_wall = second.usage.wall_s / whole.usage.wall_s
    by_leg = second.leg_seconds / whole.leg_seconds
    exact = received == data.records and second.report["exit_code"] == 0
    markdown = "\n".join(
        [
            f"{done:.1%} of the records were acknowledged when the first leg stopped. "
            f"The server received {received:,} records over both legs "
            f"({'exactly the input' if exact else 'NOT the input: ' + str(data.records)}).",
            "",
            table(["run", "records read", "wall s", "leg s", "of whole run (wall)"], rows),
            "",
            f"Resume / whole run: {by_wall:.1%} by wall time (start-up included), "
            f"{by_leg:.1%} by the engine's leg time.",
        ]
    )
    checks = [
        Check(
            f"resuming at 90% takes < {TARGET:.0%} of the whole run",
            f"{by_wall:.1%} wall, {by_leg:.1%} leg (stopped at {done:.0%})",
            by_wall < TARGET,
        )
    ]
    out = {
        "done_at_stop": round(done, 4),
        "whole_wall_s": round(whole.usage.wall_s, 3),
        "whole_leg_s": whole.leg_seconds,
        "first_wall_s": round(first.usage.wall_s, 3),
        "resume_wall_s": round(second.usage.wall_s, 3),
        "resume_leg_s": second.leg_seconds,
        "resume_of_whole_wall": round(by_wall, 4),
        "resume_of_whole_leg": round(by_leg, 4),
        "received_total": received,
        "exactly_once": exact,
    }
    return Section("resume", "Resume", markdown, out, checks)
