"""Mapped CSV against native JSON lines (issue 7): the same records, loaded both ways.

The CSV (shaped like the public "eCommerce behavior data" export) and the JSON lines holding
exactly the records its mapping produces come from `benchmarks.bench_mapping` (written with
the mapping); here each load runs as its own `backfill run` process, like every contender,
once with `--dry-run` (the local side, where mapping adds its work) and once against the
count-only server. Skipped with a note while the mapping config or module is missing.
"""

from __future__ import annotations

import asyncio
import shutil
import tomllib
from pathlib import Path
from typing import Any

from benchmarks.contenders import EngineRun, run_engine
from benchmarks.harness import ROOT, BenchError, Server, say, scratch_dir
from benchmarks.report import Check, Section, table

CONFIG = ROOT / "configs" / "mapping-ecommerce-csv.toml"
TARGET = 0.5


def section(records: int) -> Section:
    reason = _missing()
    if reason:
        return Section(
            "mapping",
            "Mapped CSV vs native JSON lines (issue 7)",
            f"Skipped: {reason}.",
            {"skipped": reason},
            [Check(f"mapped CSV >= {TARGET} x native JSON lines", "skipped: " + reason, None)],
        )
    work = scratch_dir("mapping-")
    try:
        csv_path, native_path, sent = _inputs(work, records)
        rows: list[tuple[object, ...]] = []
        data: dict[str, Any] = {"records": records, "records_sent": sent}
        for mode in ("dry_run", "server"):
            native, mapped = _loads(mode, csv_path, native_path, sent)
            n_rate, m_rate = sent / native.usage.wall_s, sent / mapped.usage.wall_s
            data[mode] = {
                "native_records_per_s": round(n_rate),
                "mapped_records_per_s": round(m_rate),
                "native_cpu_s": round(native.usage.cpu_s, 2),
                "mapped_cpu_s": round(mapped.usage.cpu_s, 2),
                "ratio": round(m_rate / n_rate, 3),
            }
            rows.append(
                (mode.replace("_", "-"), round(n_rate), round(m_rate), round(m_rate / n_rate, 2))
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    markdown = "\n".join(
        [
            f"{records:,} CSV rows mapped with `configs/{CONFIG.name}` into {sent:,} records; "
            "the native file holds exactly those records. Rates over each process's wall time.",
            "",
            table(
                ["mode", "native JSONL records/s", "mapped CSV records/s", "mapped / native"], rows
            ),
        ]
    )
    ratio = data["server"]["ratio"]
    checks = [
        Check(
            f"mapped CSV >= {TARGET} x native JSON lines (end to end)",
            f"{ratio:.2f}",
            ratio >= TARGET,
        )
    ]
    return Section("mapping", "Mapped CSV vs native JSON lines (issue 7)", markdown, data, checks)


def _missing() -> str | None:
    if not CONFIG.exists():
        found = sorted(p.name for p in CONFIG.parent.glob("mapping-*.toml"))
        return (
            f"{CONFIG.relative_to(ROOT)} does not exist (mapping configs found: {found or 'none'})"
        )
    try:
        from benchmarks import bench_mapping
    except ImportError as exc:
        return f"the mapping is not importable yet ({exc})"
    needed = ("write_csv", "write_native")
    if not all(hasattr(bench_mapping, name) for name in needed):
        return f"benchmarks/bench_mapping.py no longer has {' and '.join(needed)}"
    return None


def _inputs(work: Path, records: int) -> tuple[Path, Path, int]:
    from backfill.config import Settings
    from benchmarks import bench_mapping

    csv_path, native_path = work / "events.csv", work / "events.jsonl"
    say(f"  writing {records:,} CSV rows and their mapped JSON lines")
    bench_mapping.write_csv(csv_path, records)
    with open(CONFIG, "rb") as fh:
        mapping: dict[str, Any] = tomllib.load(fh)["mapping"]
    settings = Settings(mapping=mapping, config_file=str(CONFIG), kind="interactions")
    sent = asyncio.run(bench_mapping.write_native(csv_path, native_path, settings))
    return csv_path, native_path, sent


def _loads(mode: str, csv_path: Path, native_path: Path, sent: int) -> tuple[EngineRun, EngineRun]:
    say(f"  native and mapped loads ({mode.replace('_', '-')})")
    if mode == "dry_run":
        native = run_engine(None, [str(native_path)])
        mapped = run_engine(None, [str(csv_path)], "--config", str(CONFIG))
    else:
        with Server() as server:
            native = run_engine(server, [str(native_path)])
            mapped = run_engine(server, [str(csv_path)], "--config", str(CONFIG))
    for name, run in (("native", native), ("mapped", mapped)):
        if run.report["records_valid"] != sent:
            raise BenchError(
                f"{name} load ({mode}): {run.report['records_valid']} valid of {sent} records"
            )
    return native, mapped
