"""Decides, per /v1 request, how the server misbehaves: the configured Faults plus test headers.

The decision is made once per request into a `FaultPlan`, so the request path reads as
"apply the plan" and every random draw comes from one seeded generator (replayable runs).
Per-request headers (`X-Fault-*`) override the configured rates for that request only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping

import msgspec

from backfill.server.config import Faults, Latency

RANDOM_ERROR_STATUSES = (500, 502, 503)
THROTTLE_STATUS = 429

HEADER_STATUS = "X-Fault-Status"
HEADER_LATENCY = "X-Fault-Latency"
HEADER_DROP = "X-Fault-Drop"
HEADER_LOST_ANSWER = "X-Fault-Lost-Answer"
HEADER_STALL = "X-Fault-Stall"
HEADER_RETRY_AFTER = "X-Fault-Retry-After"


class FaultHeaderError(ValueError):
    """An X-Fault-* header a test sent could not be read; answered 400 with this message."""


class FaultPlan(msgspec.Struct, frozen=True):
    """What to do to one request, in the order the server applies it."""

    latency: float = 0.0  # seconds before anything else
    drop: bool = False  # close the connection after reading the request, store nothing
    stall: float = 0.0  # seconds before processing; the request is lost if the client leaves
    status: int | None = None  # answer this error instead of processing
    retry_after: float | None = None  # Retry-After header on the error answer
    lost_answer: bool = False  # process and store, then close without answering


class FaultInjector:
    """Holds the live Faults and the state they need (generator, fail_first budget, regexes)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._latency = Latency.parse(faults.latency)
        self._failures_left = faults.fail_first
        self._poll_throttles_left = faults.task_throttle_first
        self._reject_user = re.compile(faults.reject_user_id) if faults.reject_user_id else None
        self._task_reject = re.compile(faults.task_reject_id) if faults.task_reject_id else None

    def plan(self, headers: Mapping[str, str]) -> FaultPlan:
        """Draws this request's faults; raises FaultHeaderError for an unreadable header."""
        status = self._status(headers)
        retry_after = _header_float(headers, HEADER_RETRY_AFTER)
        if status == THROTTLE_STATUS and retry_after is None:
            retry_after = self.faults.retry_after
        return FaultPlan(
            latency=self._latency_seconds(headers),
            drop=_header_flag(headers, HEADER_DROP) or self._draw(self.faults.drop_rate),
            stall=self._stall_seconds(headers),
            status=status,
            retry_after=retry_after if status is not None else None,
            lost_answer=(
                _header_flag(headers, HEADER_LOST_ANSWER)
                or self._draw(self.faults.lost_answer_rate)
            ),
        )

    def too_large(self, size: int) -> bool:
        return 0 < self.faults.max_body_bytes < size

    def rejects_user(self, user_id: object) -> bool:
        """The reject_user_id rule: this interaction is answered as a schema error."""
        return (
            self._reject_user is not None
            and isinstance(user_id, str)
            and self._reject_user.search(user_id) is not None
        )

    def rejects_in_task(self, record_id: str) -> bool:
        """The task_reject_id rule: accepted at upload, reported failed in the task status."""
        return self._task_reject is not None and self._task_reject.search(record_id) is not None

    def throttles_poll(self) -> bool:
        """The task_throttle_first rule: this task-status poll is answered 429."""
        if self._poll_throttles_left <= 0:
            return False
        self._poll_throttles_left -= 1
        return True

    def _draw(self, rate: float) -> bool:
        return rate > 0.0 and self._rng.random() < rate

    def _latency_seconds(self, headers: Mapping[str, str]) -> float:
        spec = headers.get(HEADER_LATENCY)
        if spec is None:
            return self._latency.sample(self._rng)
        try:
            return Latency.parse(spec).sample(self._rng)
        except ValueError as exc:
            raise FaultHeaderError(f"{HEADER_LATENCY}: {exc}") from None

    def _stall_seconds(self, headers: Mapping[str, str]) -> float:
        seconds = _header_float(headers, HEADER_STALL)
        if seconds is not None:
            return seconds
        return self.faults.stall_seconds if self._draw(self.faults.stall_rate) else 0.0

    def _status(self, headers: Mapping[str, str]) -> int | None:
        forced = headers.get(HEADER_STATUS)
        if forced is not None:
            if not forced.isdigit() or not 400 <= int(forced) <= 599:
                raise FaultHeaderError(
                    f"{HEADER_STATUS} must be an HTTP error status, not {forced!r}"
                )
            return int(forced)
        if self._failures_left > 0:
            self._failures_left -= 1
            return self.faults.fail_status
        if self._draw(self.faults.error_rate):
            return self._rng.choice(RANDOM_ERROR_STATUSES)
        if self._draw(self.faults.throttle_rate):
            return THROTTLE_STATUS
        return None


def _header_flag(headers: Mapping[str, str], name: str) -> bool:
    value = headers.get(name)
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise FaultHeaderError(f"{name} must be a number of seconds, not {value!r}") from None
    if not 0.0 <= seconds < float("inf"):
        raise FaultHeaderError(f"{name} must be a non-negative number of seconds")
    return seconds


def format_retry_after(seconds: float) -> str:
    """Whole seconds print as HTTP's delta-seconds ("3"); fractions stay ("0.5") for fast tests."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
