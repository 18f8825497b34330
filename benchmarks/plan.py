"""How big each section is: `make bench` (about 10 minutes) or BENCH_QUICK=1 (1-2 minutes)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    main_records: int  # the side-by-side table, the resume section
    naive_records: int  # the naive baseline is slow: it sends the first N records only
    careful_records: int  # the careful one too: the first files holding N records
    # peak RSS of the engine on each (records, days): the same records per file, so that
    # batches (which never span files) have the same sizes and only the length differs
    memory_runs: tuple[tuple[int, int], ...]
    latencies: tuple[float, ...]  # seconds the server waits before answering
    concurrencies: tuple[int, ...]
    latency_batch: int  # batch size of the latency sweep (the ideal line scales with it)
    latency_rounds: int  # requests per worker in one latency point (at least 2 s of them)
    cpu_bound_records: int  # input of a point whose ideal rate exceeds the CPU limit
    encoding_records: int
    mapping_records: int


FULL = Plan(
    quick=False,
    main_records=2_000_000,
    naive_records=200_000,
    careful_records=1_000_000,
    memory_runs=((1_000_000, 18), (5_000_000, 90)),
    latencies=(0.0, 0.1, 1.0),
    concurrencies=(1, 4, 16, 64, 128),
    latency_batch=1_000,
    latency_rounds=6,
    cpu_bound_records=400_000,
    encoding_records=100_000,
    mapping_records=200_000,
)

QUICK = Plan(
    quick=True,
    main_records=200_000,
    naive_records=50_000,
    careful_records=200_000,
    memory_runs=((40_000, 18), (200_000, 90)),
    latencies=(0.0, 0.1),
    concurrencies=(1, 4, 16, 64),
    latency_batch=1_000,
    latency_rounds=4,
    cpu_bound_records=100_000,
    encoding_records=50_000,
    mapping_records=50_000,
)


def current() -> Plan:
    return QUICK if os.environ.get("BENCH_QUICK", "") not in ("", "0") else FULL
