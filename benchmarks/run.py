"""`make bench`: the engine against baselines and ceilings, plus memory, latency, resume,
encoding, mapping, privacy, cloud-input, adaptive-concurrency and follow sections; `BENCH_QUICK=1`
for a CI-sized run.

Prints each section as it finishes (Markdown tables read fine as text), then writes
benchmarks/results/latest.json, latest.md, latency.png and memory.png. Progress goes to
stderr. Results are not committed: they describe one machine on one day.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from benchmarks import (
    adaptive,
    cloud,
    contenders,
    encoding,
    follow,
    latency,
    mapped,
    memory,
    plots,
    privacy,
    resume,
    scaling,
)
from benchmarks.data import dataset
from benchmarks.harness import RESULTS, BenchError, say
from benchmarks.plan import Plan, current
from benchmarks.report import Check, Section, checks_table, environment, write


def _timed(key: str, title: str, make: Callable[[], Section], sections: list[Section]) -> None:
    """Runs one section; a section that fails is reported as failed and the others go on."""
    say(f"== {title}")
    started = time.perf_counter()
    try:
        s = make()
    except BenchError as exc:
        say(f"   FAILED: {exc}")
        s = Section(
            key, title, f"FAILED: {exc}", {"error": str(exc)}, [Check(title, "error", False)]
        )
    s.seconds = time.perf_counter() - started
    sections.append(s)
    print(f"\n## {s.title}\n\n{s.markdown}\n", flush=True)


def _figures(sections: list[Section]) -> list[str]:
    by_key = {s.key: s for s in sections}
    made: list[str] = []
    try:
        if "latency" in by_key:
            plots.latency(by_key["latency"].data, RESULTS / "latency.png")
            made.append("latency.png")
        if "memory" in by_key:
            plots.memory(by_key["memory"].data, RESULTS / "memory.png", memory.LIMIT_MB)
            made.append("memory.png")
    except ImportError as exc:
        say(f"figures skipped: matplotlib is missing ({exc}); `make venv` installs the bench extra")
    for stale in {"latency.png", "memory.png"} - set(made):
        (RESULTS / stale).unlink(missing_ok=True)  # never show a previous run's figure
    return made


def run(plan: Plan) -> list[Section]:
    sections: list[Section] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    main = dataset(plan.main_records)
    whole: list[contenders.EngineRun] = []

    def side_by_side() -> Section:
        s, engine_run = contenders.section(plan, main)
        whole.append(engine_run)
        return s

    def resumed() -> Section:
        if not whole:
            raise BenchError("needs the engine run of the side-by-side section, which failed")
        return resume.section(main, whole[0])

    _timed("table", "side by side", side_by_side, sections)
    _timed("memory", "memory", lambda: memory.section(plan), sections)
    _timed("latency", "latency scaling", lambda: latency.section(plan, main), sections)
    _timed("resume", "resume", resumed, sections)
    _timed("encoding", "encoding", lambda: encoding.section(main, plan.encoding_records), sections)
    _timed("mapping", "mapping", lambda: mapped.section(plan.mapping_records), sections)
    _timed("adaptive", adaptive.TITLE, lambda: adaptive.engine_section(plan.quick), sections)
    _timed("privacy", "privacy", lambda: privacy.section(plan.quick), sections)
    _timed("cloud", "cloud inputs", lambda: cloud.section(main), sections)
    _timed("scaling", "scaling: processes", lambda: scaling.section(plan, main), sections)
    _timed("follow", "follow: append to arrival", lambda: follow.section(plan.quick), sections)
    return sections


def main() -> int:
    plan = current()
    env = environment(plan.quick)
    started = time.perf_counter()
    try:
        sections = run(plan)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    figures = _figures([s for s in sections if "error" not in s.data])
    write(RESULTS, sections, env, figures)
    note = "(quick run: indicative only, judge with `make bench`)\n\n" if plan.quick else ""
    print("## Targets\n\n" + note + checks_table(sections) + "\n")
    say(f"done in {time.perf_counter() - started:.0f} s: {RESULTS / 'latest.md'}")
    return 1 if any("error" in s.data for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
