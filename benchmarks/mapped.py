"""Mapped CSV against native JSON lines (issue 7): the same records, loaded both ways.

The CSV has the shape of the public "eCommerce behavior data" export and is loaded with
configs/mapping-ecommerce-csv.toml; the JSON-lines file holds exactly the records that mapping
produces (written with the mapping itself), so both loads send identical bodies. Each load runs
as its own `backfill run` process, like every contender, once with `--dry-run` (read, map,
validate, batch: the part mapping adds to) and once against the count-only server.

    python -m benchmarks.mapped [--records 200000]

`section()` is the mapping section of `make bench`; it is skipped with a note while the
mapping config is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tomllib
from pathlib import Path
from typing import Any

from backfill.config import Settings
from backfill.mapping import MappingTransform, build_transform, map_file_blocks
from backfill.sources import LocalFile
from benchmarks.contenders import EngineRun, run_engine
from benchmarks.harness import ROOT, BenchError, Server, say, scratch_dir
from benchmarks.report import Check, Section, table

CONFIG = ROOT / "configs" / "mapping-ecommerce-csv.toml"
TARGET = 0.5
TITLE = "Mapped CSV vs native JSON lines (issue 7)"
HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
EVENTS = ["view"] * 90 + ["cart"] * 6 + ["remove_from_cart"] * 2 + ["purchase"] * 2
CATEGORIES = ["electronics.smartphone", "appliances.kitchen.mixer", "apparel.shoes.keds", ""]
BRANDS = ["apple", "samsung", "bosch", "xiaomi", ""]


def section(records: int) -> Section:
    if not CONFIG.exists():
        found = sorted(p.name for p in CONFIG.parent.glob("mapping-*.toml"))
        reason = (
            f"{CONFIG.relative_to(ROOT)} does not exist (mapping configs found: {found or 'none'})"
        )
        check = Check(f"mapped CSV >= {TARGET} x native JSON lines", "skipped: " + reason, None)
        return Section("mapping", TITLE, f"Skipped: {reason}.", {"skipped": reason}, [check])
    data, rows = measure(records)
    markdown = "\n".join(
        [
            f"{records:,} CSV rows mapped with `configs/{CONFIG.name}` into "
            f"{data['records_sent']:,} records; the native file holds exactly those records. "
            "Rates over each process's wall time.",
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
    return Section("mapping", TITLE, markdown, data, checks)


def measure(records: int) -> tuple[dict[str, Any], list[tuple[object, ...]]]:
    """Both loads in both modes: the section's data, and one table row per mode."""
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
    return data, rows


def write_csv(path: Path, records: int, seed: int = 7, per_second: float = 16.0) -> None:
    """Rows in time order, `per_second` events a second on average like the real export
    (42 million events in October 2019: about 16 a second)."""
    rnd = random.Random(seed)
    rows = [HEADER]
    second = 0
    for i in range(records):
        second += rnd.random() < 1 / per_second
        hh, mm, ss = second // 3600 % 24, second // 60 % 60, second % 60
        rows.append(
            f"2019-10-{1 + second // 86400 % 28:02d} {hh:02d}:{mm:02d}:{ss:02d} UTC,"
            f"{rnd.choice(EVENTS)},{1000000 + rnd.randrange(50000)},"
            f"{2053013555631882655 + rnd.randrange(1000)},{rnd.choice(CATEGORIES)},"
            f"{rnd.choice(BRANDS)},{rnd.randrange(100, 200000) / 100:.2f},"
            f"{510000000 + rnd.randrange(100000)},session-{i // 7:08d}"
        )
    path.write_text("\n".join(rows) + "\n")


async def write_native(csv_path: Path, out: Path, settings: Settings) -> int:
    """The mapped records of `csv_path` as Miso JSON lines; returns how many."""
    transform = build_transform(settings)
    assert isinstance(transform, MappingTransform)
    count = 0
    with open(out, "wb") as fh:
        async for block in map_file_blocks(transform, LocalFile.at(csv_path)):
            for line in block.lines:
                if line:
                    fh.write(line + b"\n")
                    count += 1
    return count


def _inputs(work: Path, records: int) -> tuple[Path, Path, int]:
    csv_path, native_path = work / "events.csv", work / "events.jsonl"
    say(f"  writing {records:,} CSV rows and their mapped JSON lines")
    write_csv(csv_path, records)
    with open(CONFIG, "rb") as fh:
        mapping: dict[str, Any] = tomllib.load(fh)["mapping"]
    settings = Settings(mapping=mapping, config_file=str(CONFIG), kind="interactions")
    sent = asyncio.run(write_native(csv_path, native_path, settings))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    print(section(args.records).markdown)


if __name__ == "__main__":
    main()
