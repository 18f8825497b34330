"""Where the engine's time goes: py-spy on a default `backfill run` against the count-only server.

    python -m benchmarks.profile [RECORDS]        # default 2,000,000; writes results/profile.md

py-spy samples the engine process from outside (no instrumentation overhead in the hot loop)
with thread ids, so the main thread (the event loop: reading, validation, batching, HTTP)
is told apart from the helper threads (gzip inflation, checkpoint commits). Each sample is
put in one category by the innermost frame of ours or of a library we know.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from benchmarks.data import dataset
from benchmarks.harness import (
    RESULTS,
    BenchError,
    Server,
    backfill,
    child_env,
    run_measured,
    say,
    scratch_dir,
)
from benchmarks.report import table

RATE = 200  # samples per second
CATEGORIES: list[tuple[str, str]] = [
    ("start-up (imports)", r"importlib|<frozen|_find_and_load"),
    ("idle (threads waiting)", r"concurrent/futures/thread\.py:\d+\)$|_worker \(|threading\.py"),
    ("validation (schema/)", r"backfill/schema/"),
    ("batching (batching.py)", r"backfill/batching\.py"),
    ("reading: gunzip, split (sources/)", r"backfill/sources/"),
    ("checkpoint (SQLite)", r"backfill/checkpoint/|sqlite3"),
    ("HTTP (aiohttp, client.py)", r"aiohttp/|backfill/client\.py|yarl/|multidict/"),
    ("engine wiring (engine/)", r"backfill/engine/"),
    ("event loop (asyncio, uvloop)", r"asyncio/|uvloop"),
]
_LINE = re.compile(r"^thread \((\d+)\)(?::[^;]*)?;?(.*) (\d+)$")


def categorize(stack: str) -> str:
    frames = stack.split(";") if stack else []
    if any("_find_and_load" in f for f in frames):
        return CATEGORIES[0][0]
    for frame in reversed(frames):
        for name, pattern in CATEGORIES[1:]:
            if re.search(pattern, frame):
                return name
    return "other"


def aggregate(raw: str, main_tid: int) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """(main-thread categories, other-thread categories, main-thread leaf functions)."""
    main, other, leaves = Counter[str](), Counter[str](), Counter[str]()
    for line in raw.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        tid, stack, count = int(m.group(1)), m.group(2), int(m.group(3))
        category = categorize(stack)
        if tid == main_tid:
            main[category] += count
            leaves[stack.rsplit(";", 1)[-1] or "?"] += count
        else:
            other[category] += count
    return main, other, leaves


def profile(records: int) -> str:
    data = dataset(records)
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        raise BenchError("py-spy is not installed (pip install py-spy)")
    spy = (
        str(Path(sys.executable).parent / "py-spy") if shutil.which("py-spy") is None else "py-spy"
    )
    state = scratch_dir("profile-")
    out = state / "profile.raw"
    try:
        with Server() as server:
            engine = backfill(
                "run",
                data.pattern,
                "--endpoint",
                server.url,
                "--state-dir",
                str(state),
                "--progress",
                "off",
            )
            cmd = [
                spy,
                "record",
                "--threads",
                "--function",
                "-r",
                str(RATE),
                "-f",
                "raw",
                "-o",
                str(out),
                "--",
                *engine,
            ]
            say(f"profiling the engine on {records:,} records")
            usage = run_measured(cmd, env=child_env())
        if usage.exit_code != 0 or not out.exists():
            raise BenchError(f"py-spy failed (exit {usage.exit_code}):\n{usage.stderr[-2000:]}")
        raw = out.read_text()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return render(raw, records, usage.wall_s)


def render(raw: str, records: int, wall_s: float) -> str:
    tids = {int(m.group(1)) for m in map(_LINE.match, raw.splitlines()) if m}
    main_tid = min(tids, default=0)  # the main thread's id is the process id: the lowest
    main, other, leaves = aggregate(raw, main_tid)
    total_main = sum(main.values()) or 1
    rows = [(name, f"{n / total_main:.1%}", round(n / RATE, 1)) for name, n in main.most_common()]
    other_rows = [(name, round(n / RATE, 1)) for name, n in other.most_common() if n / RATE >= 0.1]
    top = [(name[:90], f"{n / total_main:.1%}") for name, n in leaves.most_common(15)]
    return "\n".join(
        [
            f"py-spy, {RATE} samples/s, `backfill run` (defaults) on {records:,} records against "
            f"the count-only server; {wall_s:.1f} s under the profiler.",
            "",
            "Main thread (event loop), by category:",
            "",
            table(["category", "share", "seconds"], rows),
            "",
            "Other threads (gzip inflation runs here; zlib releases the GIL):",
            "",
            table(["category", "seconds"], other_rows),
            "",
            "Main thread, top functions (self time):",
            "",
            table(["function", "share"], top),
        ]
    )


def main(argv: list[str]) -> int:
    records = int(argv[0]) if argv else 2_000_000
    try:
        text = profile(records)
    except BenchError as exc:
        print(f"profile: error: {exc}", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile.md").write_text(f"# Engine profile\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
