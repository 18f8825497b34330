"""Latency scaling: with the server waiting L seconds per request, throughput against concurrency.

Little's law gives the ideal line, `concurrency x batch size / latency`, until the CPU runs
out; the CPU limit is the best rate measured at zero latency. Each point sends a prefix of
the generated logs sized for about `rounds` full rounds of requests (at least a couple of
seconds), and its rate is the engine's own leg time (start-up excluded: it is not what
concurrency changes).
"""

from __future__ import annotations

from typing import Any

from benchmarks.contenders import run_engine
from benchmarks.data import Dataset, write_slice
from benchmarks.harness import DATA, BenchError, Server, say
from benchmarks.plan import Plan
from benchmarks.report import Check, Section, table

EFFICIENCY = 0.8
MIN_POINT_SECONDS = 2.0


def _records(plan: Plan, latency: float, concurrency: int, cpu_limit: float, have: int) -> int:
    if latency == 0:
        return min(plan.cpu_bound_records, have)
    ideal = concurrency * plan.latency_batch / latency
    seconds = max(MIN_POINT_SECONDS, plan.latency_rounds * latency)
    rounds_worth = min(ideal, cpu_limit) * seconds
    return min(max(int(rounds_worth), concurrency * plan.latency_batch), have)


def _point(
    plan: Plan, source: Dataset, server: Server, concurrency: int, records: int
) -> dict[str, Any]:
    path = DATA / f"slice-{records}.jsonl"
    try:
        got = write_slice(source, records, path)
        if got < records:
            raise BenchError(f"latency sweep: the dataset has only {got} of {records} records")
        run = run_engine(
            server,
            [str(path)],
            "--concurrency",
            str(concurrency),
            "--batch-size",
            str(plan.latency_batch),
        )
    finally:
        path.unlink(missing_ok=True)
    report = run.report
    if report["records_accepted"] != records:
        raise BenchError(f"latency sweep: {report['records_accepted']} of {records} accepted")
    leg = run.leg_seconds
    return {
        "concurrency": concurrency,
        "records": records,
        "leg_s": round(leg, 3),
        "wall_s": round(run.usage.wall_s, 3),
        "records_per_s": round(records / leg),
        "cpu_s": round(run.usage.cpu_s, 2),
    }


def section(plan: Plan, source: Dataset) -> Section:
    cpu_limit = float("inf")
    curves: dict[str, list[dict[str, Any]]] = {}
    for latency in sorted(plan.latencies):
        points = []
        with Server(latency=latency) as server:
            for c in plan.concurrencies:
                n = _records(plan, latency, c, cpu_limit, source.records)
                say(f"  latency {latency:g} s, concurrency {c}: {n:,} records")
                point = _point(plan, source, server, c, n)
                point["ideal_records_per_s"] = (
                    None if latency == 0 else round(c * plan.latency_batch / latency)
                )
                points.append(point)
        if latency == 0:
            cpu_limit = max(p["records_per_s"] for p in points)
        curves[f"{latency:g}"] = points
    for points in curves.values():
        for p in points:
            ideal = p["ideal_records_per_s"]
            p["below_cpu_limit"] = ideal is not None and ideal <= cpu_limit
            p["of_ideal"] = None if ideal is None else round(p["records_per_s"] / ideal, 3)
    return _section(plan, curves, cpu_limit)


def _section(plan: Plan, curves: dict[str, list[dict[str, Any]]], cpu_limit: float) -> Section:
    rows = [
        (
            f"{lat} s",
            p["concurrency"],
            p["records"],
            p["records_per_s"],
            p["ideal_records_per_s"],
            p["of_ideal"],
        )
        for lat, points in curves.items()
        for p in points
    ]
    worst_latency = max(plan.latencies)
    judged = [p for p in curves[f"{worst_latency:g}"] if p["below_cpu_limit"]]
    worst = min((p["of_ideal"] for p in judged), default=None)
    markdown = "\n".join(
        [
            f"Batch size {plan.latency_batch:,}; ideal = concurrency x batch / latency; CPU limit "
            f"(best rate at zero latency) {cpu_limit:,.0f} records/s. Rates are the engine's leg "
            "time (interpreter start-up excluded). Figure: latency.png.",
            "",
            table(["latency", "concurrency", "records", "records/s", "ideal", "of ideal"], rows),
        ]
    )
    note = "" if worst_latency >= 1.0 else f" (quick run: {worst_latency:g} s, not 1 s)"
    checks = [
        Check(
            f"at {worst_latency:g} s latency, >= {EFFICIENCY:.0%} of ideal up to the CPU limit",
            ("-" if worst is None else f"worst {worst:.0%} over {len(judged)} points") + note,
            None if worst is None else worst >= EFFICIENCY,
        )
    ]
    data = {"batch_size": plan.latency_batch, "cpu_limit": round(cpu_limit), "curves": curves}
    return Section("latency", "Latency scaling", markdown, data, checks)
