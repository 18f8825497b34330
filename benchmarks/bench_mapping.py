"""Mapped CSV vs native JSON lines: the same records, loaded both ways (issue 7, item 4).

The CSV has the shape of the "eCommerce behavior data" export and is loaded with
configs/mapping-ecommerce-csv.toml; the JSON-lines file holds exactly the records that mapping
produces, so both loads send identical bodies. Each load runs twice: `--dry-run` (read, map,
validate, batch: the part mapping adds to) and against the embedded server on loopback.

    python -m benchmarks.bench_mapping [--records 200000] [--no-server]

`compare()` returns the numbers for `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from backfill.config import Secret, Settings
from backfill.engine import Engine
from backfill.mapping import MappingTransform, build_transform, map_file_blocks
from backfill.server import ServerConfig, start_server

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mapping-ecommerce-csv.toml"
HEADER = (
    "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
)
EVENTS = ["view"] * 90 + ["cart"] * 6 + ["remove_from_cart"] * 2 + ["purchase"] * 2
CATEGORIES = ["electronics.smartphone", "appliances.kitchen.mixer", "apparel.shoes.keds", ""]
BRANDS = ["apple", "samsung", "bosch", "xiaomi", ""]


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
        async for block in map_file_blocks(transform, csv_path):
            for line in block.lines:
                if line:
                    fh.write(line + b"\n")
                    count += 1
    return count


def _settings(config: dict[str, Any], **values: Any) -> Settings:
    s = Settings(**values, **config)
    s.check()
    return s


async def _load(settings: Settings, key: str) -> dict[str, Any]:
    """One load from scratch; records/s by wall clock and by this process's CPU time (the
    latter is steadier on a busy machine; the embedded server runs in this process too)."""
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()
    report = await Engine(settings, Secret(key)).run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "records": report["records_read"],
        "accepted": report["records_accepted"],
        "seconds": round(seconds, 3),
        "records_per_s": round(report["records_read"] / seconds),
        "records_per_cpu_s": round(report["records_read"] / cpu),
    }


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = max(runs, key=lambda r: r["records_per_s"])
    return {**best, "records_per_cpu_s": max(r["records_per_cpu_s"] for r in runs)}


async def compare(
    records: int = 200_000,
    server: bool = True,
    repeat: int = 3,
    per_second: float = 16.0,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Loads the same records as mapped CSV and as native JSON lines, `repeat` times each
    (interleaved, best kept); returns records/s and the ratio mapped/native."""
    with tempfile.TemporaryDirectory() as tmp:
        base = workdir or Path(tmp)
        csv_path, jsonl_path = base / "events.csv", base / "events.jsonl"
        write_csv(csv_path, records, per_second=per_second)
        with open(CONFIG, "rb") as fh:
            raw = tomllib.load(fh)
        mapping = {"mapping": raw["mapping"], "config_file": str(CONFIG), "kind": "interactions"}
        sent = await write_native(csv_path, jsonl_path, _settings(mapping))
        results: dict[str, Any] = {"records": records, "records_sent": sent}
        modes = [("dry_run", True)] + ([("server", False)] if server else [])
        for mode, dry in modes:
            srv = None if dry else await start_server(ServerConfig(port=0, store="memory"))
            try:
                endpoint = srv.url if srv else "http://127.0.0.1:9"
                key = srv.secret_key if srv else ""
                common = {"endpoint": endpoint, "progress": "off", "dry_run": dry}
                native_settings = _settings(
                    {}, inputs=[str(jsonl_path)], state_dir=str(base / "native"), **common
                )
                mapped_settings = _settings(
                    mapping, inputs=[str(csv_path)], state_dir=str(base / "mapped"), **common
                )
                natives, mappeds = [], []
                for _ in range(repeat):
                    natives.append(await _load(native_settings, key))
                    mappeds.append(await _load(mapped_settings, key))
            finally:
                if srv:
                    await srv.close()
            native, mapped = _best(natives), _best(mappeds)
            results[mode] = {
                "native_jsonl": native,
                "mapped_csv": mapped,
                "ratio": round(mapped["records_per_s"] / native["records_per_s"], 2),
                "cpu_ratio": round(mapped["records_per_cpu_s"] / native["records_per_cpu_s"], 2),
            }
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--per-second", type=float, default=16.0, help="events a second")
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(compare(args.records, not args.no_server, args.repeat, args.per_second))
    for mode in ("dry_run", "server"):
        if mode in result:
            r = result[mode]
            n, m = r["native_jsonl"], r["mapped_csv"]
            print(
                f"{mode:8} native JSONL {n['records_per_s']:>9,} rec/s "
                f"({n['records_per_cpu_s']:,}/cpu-s)   mapped CSV {m['records_per_s']:>9,} rec/s "
                f"({m['records_per_cpu_s']:,}/cpu-s)   ratio {r['ratio']:.2f} "
                f"(cpu {r['cpu_ratio']:.2f})"
            )


if __name__ == "__main__":
    main()
