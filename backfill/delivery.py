"""One batch's journey at the API: send, retry, split on 413, drop on 422, bisect, task status.

    engine ──Batch──> Sender.deliver ──Request──> RateCap ──> ConcurrencyLimit ──> MisoClient
                      (retry with the policy,     (tokens     (a slot per attempt;  (one HTTP call;
                       split, drop, bisect,        before a    records its RTT or    classify reads
                       --wait-tasks polling)       slot)       back-pressure)        the status)

The journey reads only `Answer` types; `client.classify` is the one place that reads a status
code. Limits are `Service` wrappers applied to every attempt (never to a backoff), so a new
limit (a rate cap, adaptive concurrency) is one more wrapper around the client, not a change
to the journey. The engine only wires this, records what was acknowledged and stops it.

The rate cap waits outside the concurrency limit: a request held back by the cap holds no
slot, so an adaptive limit never sees a "reached" limit that is really the cap's doing.
A Retry-After pauses the limit itself (`pause_until`), so every request, not only the one
that got it, waits until then, in fixed and auto mode alike. A --wait-tasks poll of a task's
status is a request like an upload to these layers (a token of the request cap, a slot, the
Retry-After it draws), though it never feeds the adaptive limit's round-trip mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from backfill import concurrency
from backfill.batching import Batch, Rejected
from backfill.client import (
    Accepted,
    Answer,
    Fatal,
    MisoClient,
    NotFound,
    Request,
    Retryable,
    SchemaRejected,
    describe,
    label,
)
from backfill.config import Secret, Settings
from backfill.errors import Abandoned, NeedsUser, RetriesExhausted, ServerRefused
from backfill.metrics import Metrics
from backfill.ratelimit import RateCaps, share
from backfill.retry import RetryPolicy
from backfill.targets import Target
from backfill.waiting import wait_event

log = logging.getLogger("backfill")

TASK_POLLS = 10  # GETs of a task status before its errors are taken as unknown
SPLIT_BUDGET = 64  # requests a batch may take beyond 2 x log2(records) to split or bisect


# -- the service and its layers ----------------------------------------------------------


class Service(Protocol):
    """Sends one request once and classifies the answer: the client, or a layer around it."""

    async def send(self, request: Request) -> Answer: ...


class ConcurrencyLimit:
    """At most `limit.limit` attempts in flight; a backoff waits outside it, holding no slot.

    Every attempt is recorded in the limit (Vector's users' complaint: a retry sequence timed
    as one slow round trip): a success's round trip, or back-pressure (429, 5xx except 501,
    a timeout, as `client.classify` says). A Retry-After pauses every acquirer of the limit.
    """

    def __init__(
        self,
        inner: Service,
        limit: int | concurrency.ConcurrencyLimit,
        metrics: Metrics | None = None,
    ) -> None:
        self._inner = inner
        self.limit = concurrency.FixedLimit(limit) if isinstance(limit, int) else limit
        self._metrics = metrics

    async def send(self, request: Request) -> Answer:
        async with self.limit.slot():
            started = time.monotonic()
            answer = await self._inner.send(request)
            rtt = time.monotonic() - started
            backpressure = isinstance(answer, Retryable) and answer.backpressure
            # a task status is quicker than an upload: its round trip would skew the mean
            timed = isinstance(answer, Accepted) and request.path is None
            self.limit.record(rtt if timed else None, backpressure)
        if isinstance(answer, Retryable) and answer.retry_after:
            self.limit.pause_until(time.monotonic() + answer.retry_after)
        if self._metrics is not None:
            answered = not (isinstance(answer, Retryable) and answer.label == "connection")
            self._metrics.attempt(label(answer), rtt if answered else None, len(request.body))
        return answer


class RateCap:
    """--max-records-per-second / --max-requests-per-second: every attempt takes its records
    (and one request) from the caps before it may queue for a slot."""

    def __init__(self, inner: Service, caps: RateCaps) -> None:
        self._inner = inner
        self.caps = caps

    async def send(self, request: Request) -> Answer:
        await self.caps.acquire(request.records)
        return await self._inner.send(request)


class DryRun:
    """--dry-run: every request is accepted without a network; nothing leaves the machine."""

    async def send(self, request: Request) -> Answer:
        return Accepted()


# -- what happened to one batch, and to all of them ----------------------------------------


@dataclass(slots=True)
class Delivery:
    """What happened to one batch at the API."""

    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    ambiguous: int = 0  # attempts that failed after the request may have been stored
    sending: bool = False  # an attempt is on the wire, or its acceptance not yet counted
    stop: NeedsUser | None = None  # the run must stop once this batch is recorded

    @property
    def maybe_stored(self) -> bool:
        """False when every attempt was refused in a way that stores nothing (or never
        connected): the batch is then sent again on resume, never counted as a duplicate."""
        return bool(self.accepted or self.ambiguous or self.sending)


class Meter(Protocol):
    """Live counters of the leg (progress.LegStats), updated per attempt."""

    requests: int
    retries: int


@dataclass(slots=True)
class RejectionGuard:
    """Stops a run the server refuses wholesale, instead of dead-lettering the whole input:
    once `window` records were sent, more than `ratio` of them refused is systematic."""

    ratio: float
    window: int
    sent: int = 0
    refused: int = 0

    def add(self, sent: int, refused: int) -> NeedsUser | None:
        self.sent += sent
        self.refused += refused
        if self.sent < self.window or self.refused <= self.ratio * self.sent:
            return None
        return ServerRefused(
            f"the server refused {self.refused:,} of the {self.sent:,} records sent so far "
            f"({self.refused / self.sent:.0%} > --max-rejected-ratio {self.ratio}): it "
            "refuses records wholesale (see the dead-letter file for its words). Fix the "
            "cause and rerun to resume; --max-rejected-ratio 1 never stops"
        )


def split_budget(records: int) -> int:
    """Requests one batch may take: enough to isolate a few records the server does not
    name, few enough that one bad answer never becomes a storm."""
    return 2 * math.ceil(math.log2(max(records, 1))) + SPLIT_BUDGET


# -- the journey -------------------------------------------------------------------------


class Sender:
    """Delivers batches: every record ends accepted or rejected with the server's words."""

    def __init__(
        self,
        service: Service,
        client: MisoClient,
        target: Target,
        policy: RetryPolicy,
        guard: RejectionGuard,
        *,
        wait_tasks: bool,
        meter: Meter,
        warn: Callable[[str], None],
        limit: concurrency.ConcurrencyLimit | None = None,
        caps: RateCaps | None = None,
    ) -> None:
        self._service = service
        self._client = client
        self._target = target
        self._policy = policy
        self._guard = guard
        self._wait_tasks = wait_tasks
        self._meter = meter
        self._warn = warn
        self._stopping = asyncio.Event()
        # the service's layers, which the engine shows and exports (progress line, metrics)
        self.limit = limit if limit is not None else concurrency.FixedLimit(1)
        self.caps = caps

    def stop(self) -> None:
        """Backoffs end at once; a batch waiting in one is given up (Abandoned)."""
        self._stopping.set()

    async def deliver(self, batch: Batch, d: Delivery) -> None:
        """422 drops exactly the records the answer names and re-sends the rest (bisecting
        when it names none); 413 splits in halves; a record alone that still fails is
        rejected with the server's words. Raises NeedsUser, or Abandoned on a stop."""
        parts = [(batch.records, batch.record_lines)]
        budget, posted = split_budget(len(batch.records)), 0
        answer: Answer = Accepted()
        while parts:
            records, lines = parts.pop()
            if posted >= budget:
                raise self._over_budget(batch, posted, answer)
            posted += 1
            answer = await self._attempts(Request(self._target.body(records), len(records)), d)
            if isinstance(answer, Fatal):
                raise answer.error
            if isinstance(answer, Accepted):
                await self._accepted(answer, records, lines, d)
                d.sending = False
            else:
                parts.extend(_next_parts(answer, records, lines, d))
        d.stop = self._guard.add(len(batch.records), len(d.rejected))
        if d.stop is not None and not d.accepted:
            raise d.stop  # nothing of it stored: re-read on resume, nothing dead-lettered

    async def _accepted(
        self, answer: Accepted, records: list[bytes], lines: list[int], d: Delivery
    ) -> None:
        errors = answer.errors
        if answer.task_id and self._wait_tasks:
            errors = {**await self._task_errors(answer.task_id), **errors}
        refused = [(i, message) for i, message in errors.items() if 0 <= i < len(records)]
        for i, message in refused:
            d.rejected.append(Rejected(lines[i], message, records[i], "server"))
        d.accepted += len(records) - len(refused)

    def _over_budget(self, batch: Batch, posted: int, answer: Answer) -> NeedsUser:
        return ServerRefused(
            f"{batch.source} lines {batch.start_line + 1}-{batch.end_line}: the server kept "
            f"refusing parts of this batch of {len(batch.records):,} records after {posted} "
            f"requests (last answer: {describe(answer)}). It refuses bodies or records "
            "wholesale: check the server, or lower --max-batch-bytes or --batch-size, then "
            "rerun to resume"
        )

    async def _attempts(self, request: Request, d: Delivery) -> Answer:
        """One part, attempted again for what is retryable, within the policy's budget."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            d.requests += 1
            self._meter.requests += 1
            d.sending = True
            answer = await self._service.send(request)
            d.sending = isinstance(answer, Accepted)  # stored: counted by the caller
            if not isinstance(answer, Retryable):
                return answer
            d.ambiguous += answer.ambiguous
            delay = self._policy.delay(attempt, answer.retry_after)
            if self._policy.gives_up(attempt, started, delay):
                raise RetriesExhausted(
                    f"gave up after {attempt} attempts in {time.monotonic() - started:.0f} s; "
                    f"last answer: {answer.reason} from {self._client.url}. The run is "
                    "resumable: rerun the same command when the API is reachable"
                )
            d.retries += 1
            self._meter.retries += 1
            log.info("retrying in %.1f s: %s", delay, answer.reason)
            if await wait_event(self._stopping, delay):
                raise Abandoned("stopping during a retry backoff")

    async def _task_errors(self, task_id: str) -> dict[int, str]:
        """--wait-tasks: an upload's deferred per-record errors. A status not known yet (404,
        a retryable answer) is asked again, never before a Retry-After; a fatal answer (a
        redirect, 401) stops the run. A poll is a request like an upload to the limits and
        caps (the service's layers), though not a batch sent (the meter's `requests`)."""
        poll = Request(b"", 0, path=f"/v1/{self._target.kind}/_status/{task_id}")
        for attempt in range(1, TASK_POLLS + 1):
            answer = await self._service.send(poll)
            if isinstance(answer, Accepted):
                return answer.errors
            if isinstance(answer, Fatal) and not isinstance(answer, NotFound):
                raise answer.error
            retry_after = answer.retry_after if isinstance(answer, Retryable) else None
            if await wait_event(self._stopping, self._policy.delay(attempt, retry_after)):
                break
        self._warn(f"task {task_id}: status unknown after {TASK_POLLS} tries")
        return {}


def _next_parts(
    answer: Answer, records: list[bytes], lines: list[int], d: Delivery
) -> list[tuple[list[bytes], list[int]]]:
    """What to send next after a refusal: the rest (422 naming records), halves (413, or a
    422 naming none), or nothing (a single record is rejected with the server's words)."""
    if isinstance(answer, SchemaRejected) and _named_all(answer, len(records)):
        for i, message in answer.errors.items():
            d.rejected.append(Rejected(lines[i], message, records[i], "server"))
        keep = [i for i in range(len(records)) if i not in answer.errors]
        return [([records[i] for i in keep], [lines[i] for i in keep])] if keep else []
    if len(records) == 1:
        reason = (
            f"rejected by the server: {answer.message}"
            if isinstance(answer, SchemaRejected)
            else "the record alone is too large for the server (HTTP 413)"
        )
        d.rejected.append(Rejected(lines[0], reason, records[0], "server"))
        return []
    half = len(records) // 2
    return [(records[half:], lines[half:]), (records[:half], lines[:half])]


def _named_all(answer: SchemaRejected, size: int) -> bool:
    return bool(answer.errors) and all(0 <= i < size for i in answer.errors)


# -- wiring ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_sender(
    settings: Settings,
    secret: Secret,
    target: Target,
    policy: RetryPolicy,
    *,
    meter: Meter,
    warn: Callable[[str], None],
    metrics: Metrics | None = None,
    processes: int = 1,
) -> AsyncIterator[Sender]:
    """The session, the client and the layers of one leg, closed when the leg ends.
    `processes`: how many processes share the command's rate caps (each takes its share)."""
    async with open_client(settings, secret, target) as client:
        inner: Service = DryRun() if settings.dry_run else client
        limited = ConcurrencyLimit(inner, concurrency_limit(settings), metrics)
        caps = rate_caps(settings, processes)
        guard = RejectionGuard(settings.max_rejected_ratio, settings.rejected_ratio_window)
        yield Sender(
            limited if caps is None else RateCap(limited, caps),
            client,
            target,
            policy,
            guard,
            wait_tasks=settings.wait_tasks,
            meter=meter,
            warn=warn,
            limit=limited.limit,
            caps=caps,
        )


def concurrency_limit(settings: Settings) -> concurrency.ConcurrencyLimit:
    """--concurrency N, or auto between 1 and --max-concurrency from --initial-concurrency."""
    if settings.concurrency_mode == "auto":
        return concurrency.AdaptiveLimit(settings.initial_concurrency, settings.max_concurrency)
    return concurrency.FixedLimit(settings.concurrency)


def rate_caps(settings: Settings, processes: int = 1) -> RateCaps | None:
    """The caps are totals for the command: with `processes` processes, each takes its share
    (the hook for --processes)."""
    records, requests = settings.max_records_per_second, settings.max_requests_per_second
    if records is None and requests is None:
        return None
    return RateCaps(share(records, processes), share(requests, processes))


@contextlib.asynccontextmanager
async def open_client(
    settings: Settings, secret: Secret, target: Target, *, server_dry_run: bool | None = None
) -> AsyncIterator[MisoClient]:
    """A keep-alive session sized for the concurrency, and a client of `target` on it."""
    connector = aiohttp.TCPConnector(limit=settings.max_in_flight, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(
        total=settings.request_timeout, sock_connect=settings.connect_timeout
    )
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield MisoClient(
            session,
            settings.endpoint,
            target.path,
            secret,
            method=target.method,
            key_in_query=settings.key_in_query,
            server_dry_run=settings.server_dry_run if server_dry_run is None else server_dry_run,
        )
