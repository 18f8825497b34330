"""`backfill bench`: measure a real target before a load, storing nothing.

    backfill bench --endpoint https://api.askmiso.com logs/2026-06-*.jsonl.gz
    backfill bench --dry-run logs/                 # the local side alone

It reads a sample of the input (validated, as a run would), then sweeps concurrency x batch
size: each setting sends the sample's bodies for a few seconds with `dry_run=1` (Miso
validates and stores nothing; the embedded server honours it too) and reports records/s and
latency percentiles. The recommendation is the fastest setting without errors; one within 5%
of it that is gentler (fewer requests in flight, then smaller bodies) wins such a near-tie,
because a bigger setting that buys nothing measurable only loads the API. `--dry-run` times
reading, validation and encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import uvloop

from backfill.client import Accepted, Fatal, Request, Retryable, describe
from backfill.config import Secret, Settings, default_help, load_secret, load_settings
from backfill.delivery import ConcurrencyLimit, Service, open_client
from backfill.errors import NeedsUser, UsageError
from backfill.mapping import build_transform
from backfill.schema import OUT_OF_WINDOW, RecordValidator
from backfill.sources import START, Block, find_sources, open_blocks
from backfill.targets import Target, target_for

DEFAULT_CONCURRENCY: Final = (1, 4, 16, 64)
DEFAULT_BATCHES: Final[dict[str, tuple[int, ...]]] = {
    "interactions": (1_000, 5_000, 10_000),
    "products": (50, 100, 200),
    "users": (50, 100, 200),
}
NEAR_TIE: Final = 0.05  # rates this close to the best are a tie: run-to-run noise is about this
THROTTLE_PAUSE: Final = 1.0  # seconds a worker waits after a 429/5xx (no Retry-After)


# -- what is measured ----------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """Valid records of the input, and what reading and validating them cost."""

    records: list[bytes] = field(default_factory=list)
    lines: int = 0
    invalid: int = 0
    read_s: float = 0.0  # awaiting blocks: file I/O, gunzip, splitting (and mapping)
    validate_s: float = 0.0


@dataclass(slots=True)
class Point:
    """One setting of the sweep."""

    concurrency: int
    batch_size: int
    requests: int
    records: int
    seconds: float
    latencies: list[float]
    errors: int = 0
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        """Seconds; nearest-rank percentile of the request latencies."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- the command ---------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="measure a target (or the local side) and recommend concurrency and batch size",
        description="Sweep concurrency and batch size against an endpoint with dry_run=1 "
        "(nothing is stored), print records/s and latency percentiles per setting, and "
        "recommend one. --dry-run times the local side alone (read, validate, encode).",
        epilog="example: backfill bench --endpoint http://127.0.0.1:9901 logs/ --png curve.png",
    )
    p.add_argument("inputs", nargs="*", help="files, directories or globs (a sample is read)")
    p.add_argument("--config", help="TOML file of `backfill run` (endpoint, kind, mapping, key)")
    p.add_argument("--endpoint", help=f"API base URL {default_help('endpoint')}")
    p.add_argument(
        "--kind",
        choices=["interactions", "products", "users"],
        help=f"what the inputs hold {default_help('kind')}",
    )
    p.add_argument("--api-key-file", help="read the key from this file instead of $MISO_API_KEY")
    p.add_argument(
        "--key-in-query",
        action="store_const",
        const=True,
        default=None,
        help="send the key as ?api_key= instead of X-API-KEY",
    )
    p.add_argument(
        "--concurrency", type=_sizes, help=f"comma list (default {_listed(DEFAULT_CONCURRENCY)})"
    )
    p.add_argument(
        "--batch-size",
        type=_sizes,
        help=f"comma list (default {_listed(DEFAULT_BATCHES['interactions'])}; "
        f"{_listed(DEFAULT_BATCHES['products'])} for products and users)",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="per setting (default 5)")
    p.add_argument("--sample", type=int, default=100_000, help="records read (default 100000)")
    p.add_argument(
        "--request-timeout",
        type=float,
        help=f"seconds for a whole request {default_help('request_timeout')}",
    )
    p.add_argument("--png", help="save the records/s curve to this PNG file (needs matplotlib)")
    p.add_argument("--dry-run", action="store_true", help="measure the local side only")
    p.set_defaults(func=cmd_bench)


def _listed(values: Sequence[int]) -> str:
    return ",".join(map(str, values))


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.sample < 1 or args.seconds <= 0:
        raise UsageError("--sample and --seconds must be positive")
    if args.png:
        _require_matplotlib()
    batches = args.batch_size or DEFAULT_BATCHES[settings.kind]
    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sample = runner.run(read_sample(settings, args.sample))
        if not sample.records:
            raise UsageError(f"no valid records in the input ({sample.invalid:,} invalid lines)")
        target = target_for(settings.kind)
        print(render_local(sample, local_encoding(target, sample.records, batches)))
        if args.dry_run:
            return 0
        secret = load_secret(settings)
        sweeping = sweep(settings, secret, sample.records, concurrency, batches, args.seconds)
        points = runner.run(sweeping)
    print()
    print(render_points(points))
    best = recommend(points)
    print()
    print(render_recommendation(best, points, sample))
    if args.png:
        save_png(points, best, Path(args.png))
        print(f"curve saved to {args.png}")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "inputs": args.inputs or None,
        "endpoint": args.endpoint,
        "kind": args.kind,
        "api_key_file": args.api_key_file,
        "key_in_query": args.key_in_query,
        "request_timeout": args.request_timeout,
        "dry_run": args.dry_run or None,
    }
    settings = load_settings(args.config, overrides)
    if not settings.inputs:
        raise UsageError("no inputs: give files, directories or globs to take the sample from")
    return settings


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install 'backfill[bench]'") from None


# -- the local side ------------------------------------------------------------------------


async def read_sample(settings: Settings, limit: int) -> Sample:
    """Up to `limit` valid records, read and validated exactly as `backfill run` does."""
    check = RecordValidator(settings.kind, settings.rules).check
    transform = build_transform(settings)
    sample = Sample()
    transforms = [transform] if transform is not None else []
    for source in find_sources(settings.inputs):
        blocks = open_blocks(source, START, transforms, max_line_bytes=settings.max_line_bytes)
        async with contextlib.aclosing(blocks) as stream:
            mark = time.perf_counter()
            async for block in stream:
                started = time.perf_counter()
                sample.read_s += started - mark
                _validate(block, check, sample, limit)
                mark = time.perf_counter()
                sample.validate_s += mark - started
                if len(sample.records) >= limit:
                    return sample
    return sample


def _validate(
    block: Block, check: Callable[[bytes], str | None], sample: Sample, limit: int
) -> None:
    records = sample.records
    for line in block.lines:
        if not line.strip():
            continue
        sample.lines += 1
        reason = check(line)
        if reason is None:
            records.append(line)
            if len(records) >= limit:
                return
        elif reason is not OUT_OF_WINDOW:
            sample.invalid += 1


def local_encoding(
    target: Target, records: list[bytes], batch_sizes: Sequence[int]
) -> dict[int, float]:
    """Seconds to build every body of the sample, per batch size."""
    costs: dict[int, float] = {}
    for size in batch_sizes:
        started = time.perf_counter()
        for i in range(0, len(records), size):
            target.body(records[i : i + size])
        costs[size] = time.perf_counter() - started
    return costs


def render_local(sample: Sample, encoding: dict[int, float]) -> str:
    n = len(sample.records)
    encode_s = max(encoding.values())
    total = sample.read_s + sample.validate_s + encode_s
    rows = [
        ("read (gunzip, split, map)", sample.read_s, sample.lines),
        ("validate", sample.validate_s, sample.lines),
        ("encode bodies", encode_s, n),
        ("local side in all", total, n),
    ]
    lines = [
        f"local side: {n:,} valid records sampled ({sample.invalid:,} invalid lines skipped)",
        f"{'stage':<28}{'seconds':>9}{'records/s':>14}",
    ]
    lines += [f"{name:<28}{s:>9.2f}{_rate(count, s):>14}" for name, s, count in rows]
    return "\n".join(lines)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


# -- the remote side -----------------------------------------------------------------------


async def sweep(
    settings: Settings,
    secret: Secret,
    records: list[bytes],
    concurrency: Sequence[int],
    batch_sizes: Sequence[int],
    seconds: float,
) -> list[Point]:
    """Every setting in turn, on one keep-alive session sized for the largest concurrency."""
    points: list[Point] = []
    target = target_for(settings.kind)
    sized = msgspec.structs.replace(settings, concurrency=max(concurrency))
    # always dry_run=1: a benchmark must never store anything
    async with open_client(sized, secret, target, server_dry_run=True) as client:
        for size in batch_sizes:
            bodies = _bodies(target, records, size)
            for c in concurrency:
                point = await measure(ConcurrencyLimit(client, c), bodies, c, seconds)
                points.append(point)
                print(
                    f"  concurrency {c:>4}, batch {size:>6,}: {point.rate:>12,.0f} records/s",
                    file=sys.stderr,
                    flush=True,
                )
    return points


def _bodies(target: Target, records: list[bytes], size: int) -> list[tuple[bytes, int]]:
    """Bodies of `size` records from the sample (cycled when the sample is smaller)."""
    if len(records) < size:
        records = list(itertools.islice(itertools.cycle(records), size))
    return [
        (target.body(records[i : i + size]), len(records[i : i + size]))
        for i in range(0, len(records) - size + 1, size)
    ]


async def measure(
    service: Service, bodies: list[tuple[bytes, int]], concurrency: int, seconds: float
) -> Point:
    """`concurrency` workers send bodies for `seconds`, after one warm-up request each.

    Each request is one attempt through the same service a run uses (no retry: an error is
    counted, and a throttled worker pauses as the server asks)."""
    turn = itertools.count()
    point = Point(concurrency, bodies[0][1], 0, 0, 0.0, [])

    async def send(record: bool) -> None:
        body, n = bodies[next(turn) % len(bodies)]
        started = time.perf_counter()
        answer = await service.send(Request(body, n))
        if isinstance(answer, Fatal):
            raise answer.error
        if not record:
            return
        point.latencies.append(time.perf_counter() - started)
        point.requests += 1
        if isinstance(answer, Accepted) and not answer.errors:
            point.records += n
            return
        point.errors += 1
        point.first_error = point.first_error or describe(answer)
        if isinstance(answer, Retryable):
            await asyncio.sleep(answer.retry_after or THROTTLE_PAUSE)

    async def worker(deadline: float) -> None:
        while time.perf_counter() < deadline:
            await send(True)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(send(False))
        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker(started + seconds))
    except* NeedsUser as group:
        raise group.exceptions[0] from None
    point.seconds = time.perf_counter() - started
    return point


def recommend(points: Sequence[Point]) -> Point | None:
    """The best error-free setting, or a gentler one that ties with it within NEAR_TIE."""
    clean = [p for p in points if p.errors == 0 and p.records > 0]
    if not clean:
        return None
    best = max(p.rate for p in clean)
    tied = [p for p in clean if p.rate >= (1 - NEAR_TIE) * best]
    return min(tied, key=lambda p: (p.concurrency, p.batch_size))


def render_points(points: Sequence[Point]) -> str:
    head = (
        f"{'concurrency':>11} {'batch':>7} {'requests':>8} {'records/s':>12} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    rows = [
        f"{p.concurrency:>11} {p.batch_size:>7,} {p.requests:>8,} {p.rate:>12,.0f} "
        f"{p.percentile(50) * 1e3:>8.1f} {p.percentile(95) * 1e3:>8.1f} "
        f"{p.percentile(99) * 1e3:>8.1f} {p.errors:>6}"
        for p in points
    ]
    notes = [
        f"  concurrency {p.concurrency}, batch {p.batch_size}: first error: {p.first_error}"
        for p in points
        if p.first_error
    ]
    return "\n".join([head, *rows, *notes])


def render_recommendation(best: Point | None, points: Sequence[Point], sample: Sample) -> str:
    if best is None:
        return "no setting ran without errors: see the errors above before starting a load"
    top = max(p.rate for p in points if p.errors == 0)
    local = len(sample.records) / max(sample.read_s + sample.validate_s, 1e-9)
    lines = [
        f"recommended: --concurrency {best.concurrency} --batch-size {best.batch_size} "
        f"({best.rate:,.0f} records/s, p99 {best.percentile(99) * 1e3:,.0f} ms; "
        f"best seen {top:,.0f})",
        f"local side: about {local:,.0f} records/s read and validated on this machine; "
        "a run goes no faster than the slower of the two",
    ]
    return "\n".join(lines)


def save_png(points: Sequence[Point], best: Point | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size in sorted({p.batch_size for p in points}):
        mine = [p for p in points if p.batch_size == size]
        xs = [p.concurrency for p in mine]
        ax.plot(xs, [p.rate for p in mine], "o-", label=f"batch {size:,}")
    if best is not None:
        ax.plot([best.concurrency], [best.rate], "k*", markersize=14, label="recommended")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("records/s")
    ax.set_title("backfill bench")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m backfill.bench ...`: the same as `backfill bench ...`."""
    from backfill.errors import BackfillError

    parser = argparse.ArgumentParser(prog="backfill")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except BackfillError as exc:
        print(f"backfill: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
