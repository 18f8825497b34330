"""What the [privacy] step costs: read + validate with and without it (issue 17, item 4).

The same generated logs (1% of lines carry PII) are read with the engine's reader and
validated with its validator, once plain and once through `PrivacyTransform` with the whole
table on (hash_ids, truncate_ip, pii = "redact"), wired as the engine wires it: the step
validates (one decode serves both) and batching's check is the one it returns; both sides
validate a block with one `map`, as batching does. Runs alternate and the best wall time and
the best CPU time of each side are kept, so a noisy neighbour on a shared machine hurts both
alike. The target: the rate with
privacy stays at least 0.7x of the rate without.

    python -m benchmarks.privacy [--records 1000000] [--repeat 3] [--quick]

`compare()` returns the numbers for `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from backfill.config import Secret, Settings
from backfill.engine import Engine
from backfill.generate import GenerateConfig, generate
from backfill.privacy import HashKey, PrivacySettings, PrivacyTransform
from backfill.schema import RecordValidator, Rules
from backfill.sources import START, BlockTransform, LocalFile, open_blocks
from benchmarks.report import Check, Section

TARGET = 0.7
SETTINGS = PrivacySettings(hash_ids=["user_id", "anonymous_id"], truncate_ip=True, pii="redact")
BENCH_KEY = "benchmark-only-key-0123456789abcdef"


async def _load(files: list[Path], privacy: bool) -> tuple[int, int, dict[str, Any]]:
    """(records read, records valid, privacy counts) for one pass over the files."""
    validator = RecordValidator("interactions", Rules())
    step = PrivacyTransform(SETTINGS, HashKey(BENCH_KEY), "interactions") if privacy else None
    # as the engine wires it: the step validates (one decode for both), batching checks
    # what is left
    check = step.validate_with(validator) if step is not None else validator.check
    records = valid = 0
    transforms: list[BlockTransform] = [step] if step is not None else []
    for path in files:
        blocks = open_blocks(LocalFile.at(path), START, transforms)
        async with contextlib.aclosing(blocks):
            async for block in blocks:  # as batching validates: one map over the lines
                lines = block.lines
                valid += list(map(check, lines)).count(None)
                records += len(lines) - lines.count(b"") + len(block.problems)
    return records, valid, step.counts.report() if step else {}


def _timed(files: list[Path], privacy: bool) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    records, valid, counts = asyncio.run(_load(files, privacy))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"records": records, "valid": valid, "wall": wall, "cpu": cpu, "privacy": counts}


def _best(best: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """The run with the least wall time, holding the least CPU time of either: the two are
    each the best of the runs (a neighbour's load lengthens wall time, not CPU time)."""
    if best is None:
        return run
    fastest = run if run["wall"] < best["wall"] else best
    return fastest | {"cpu": min(run["cpu"], best["cpu"])}


def compare(files: list[Path], repeat: int = 3) -> dict[str, Any]:
    """Best-of-`repeat` rates (records/s, by wall and by CPU time) without and with privacy."""
    best: dict[bool, dict[str, Any]] = {}
    for _ in range(repeat):
        for privacy in (False, True):
            best[privacy] = _best(best.get(privacy), _timed(files, privacy))
    plain, private = best[False], best[True]
    return {
        "records": plain["records"],
        "plain": plain,
        "privacy": private,
        "ratio_wall": plain["wall"] / private["wall"],
        "ratio_cpu": plain["cpu"] / private["cpu"],
    }


async def _engine_once(files: list[Path], state: Path, privacy: bool) -> dict[str, Any]:
    """`backfill run --dry-run` (read, validate, batch, checkpoint; no HTTP), with the whole
    [privacy] table in its settings or none."""
    shutil.rmtree(state, ignore_errors=True)
    settings = Settings(
        inputs=[str(f) for f in files],
        state_dir=str(state),
        dry_run=True,
        progress="off",
        privacy=SETTINGS if privacy else None,
    )
    old = os.environ.get(SETTINGS.hash_key_env)
    os.environ[SETTINGS.hash_key_env] = BENCH_KEY
    try:
        engine = Engine(settings, Secret(""))
    finally:
        if old is None:
            del os.environ[SETTINGS.hash_key_env]
        else:
            os.environ[SETTINGS.hash_key_env] = old
    wall, cpu = time.perf_counter(), time.process_time()
    report = await engine.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if privacy and not report.get("privacy", {}).get("ids_hashed"):
        raise RuntimeError("the privacy step was not applied by the engine")
    return {"records": report["records_read"], "wall": wall, "cpu": cpu}


def compare_engine(files: list[Path], state: Path, repeat: int = 3) -> dict[str, Any]:
    best: dict[bool, dict[str, Any]] = {}
    for _ in range(repeat):
        for privacy in (False, True):
            best[privacy] = _best(
                best.get(privacy), asyncio.run(_engine_once(files, state, privacy))
            )
    return {
        "plain": best[False],
        "privacy": best[True],
        "ratio_wall": best[False]["wall"] / best[True]["wall"],
        "ratio_cpu": best[False]["cpu"] / best[True]["cpu"],
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        "| load                       | records   | wall s | records/s | CPU s | us/record |",
        "|----------------------------|-----------|--------|-----------|-------|-----------|",
    ]
    loads = [("read + validate", "plain"), ("read + privacy + validate", "privacy")]
    rows_of = [(name, result[key]) for name, key in loads]
    if "engine" in result:
        rows_of += [
            ("engine --dry-run", result["engine"]["plain"]),
            ("engine --dry-run + privacy", result["engine"]["privacy"]),
        ]
    for name, run in rows_of:
        rate = run["records"] / run["wall"]
        per = run["cpu"] / run["records"] * 1e6
        rows.append(
            f"| {name:<26} | {run['records']:>9,} | {run['wall']:>6.2f} | {rate:>9,.0f} "
            f"| {run['cpu']:>5.2f} | {per:>9.2f} |"
        )
    verdict = "PASS" if result["ratio_wall"] >= TARGET else "FAIL"
    rows.append("")
    rows.append(
        f"with/without privacy: {result['ratio_wall']:.2f}x by wall time, "
        f"{result['ratio_cpu']:.2f}x by CPU time (target >= {TARGET}): {verdict}"
    )
    if "engine" in result:
        engine = result["engine"]
        rows.append(
            f"engine --dry-run with/without privacy: {engine['ratio_wall']:.2f}x by wall time, "
            f"{engine['ratio_cpu']:.2f}x by CPU time"
        )
    rows.append(f"privacy step: {result['privacy']['privacy']}")
    return "\n".join(rows)


def measure(records: int, repeat: int) -> dict[str, Any]:
    """Generates the logs (1% with PII) and compares, in the reader and in the engine."""
    with tempfile.TemporaryDirectory(prefix="bench-privacy-") as tmp:
        config = GenerateConfig(
            out=tmp, records=records, days=30, seed=7, pii_rate=0.01, catalog=False
        )
        generate(config)
        files = sorted(Path(tmp).glob("interactions-*.jsonl.gz"))
        result = compare(files, repeat)
        result["engine"] = compare_engine(files, Path(tmp) / "state", repeat)
    return result


def section(quick: bool) -> Section:
    """The `make bench` section (issue 17, item 4)."""
    records, repeat = (200_000, 2) if quick else (1_000_000, 3)
    result = measure(records, repeat)
    markdown = (
        f"{records:,} generated records (1% with PII), gzip JSON lines, best of {repeat}; "
        'the whole table on (hash_ids, truncate_ip, pii = "redact").\n\n' + table(result)
    )
    ratio = result["ratio_wall"]
    target = f"privacy on >= {TARGET} x off (read + validate)"
    check = Check(target, f"{ratio:.2f}", ratio >= TARGET)
    return Section("privacy", "privacy", markdown, result, [check])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.privacy")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200,000 records, best of 2")
    args = parser.parse_args(argv)
    records, repeat = (200_000, 2) if args.quick else (args.records, args.repeat)
    result = measure(records, repeat)
    print(f"{records:,} generated records (1% with PII), gzip JSON lines, best of {repeat}\n")
    print(table(result))
    return 0 if result["ratio_wall"] >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
