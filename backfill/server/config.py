"""Typed settings of the embedded server: where it listens, where it stores, how it misbehaves.

Both Structs are decoded once at the edge (CLI flags, `POST /_admin/faults`) and checked in
`__post_init__`, so a typo in a fault rule is refused up front instead of silently never firing.
"""

from __future__ import annotations

import math
import random
import re
from typing import Literal

import msgspec

DEFAULT_DB = "miso-local.db"
DEFAULT_PORT = 9901

StoreKind = Literal["sqlite", "memory", "null"]


class Latency(msgspec.Struct, frozen=True):
    """A delay distribution parsed from "0.1", "uniform:0.05:0.2" or "exp:0.1" (seconds)."""

    shape: Literal["none", "fixed", "uniform", "exp"] = "none"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Latency:
        """Raises ValueError naming the accepted forms, so a flag typo is caught at startup."""
        text = spec.strip()
        if not text:
            return cls()
        parts = text.split(":")
        try:
            numbers = [float(p) for p in parts[1:]] if len(parts) > 1 else [float(parts[0])]
        except ValueError:
            raise ValueError(_latency_help(spec)) from None
        if any(not math.isfinite(n) or n < 0 for n in numbers):
            raise ValueError(_latency_help(spec))
        if len(parts) == 1:
            return cls("fixed", numbers[0])
        if parts[0] == "uniform" and len(numbers) == 2 and numbers[0] <= numbers[1]:
            return cls("uniform", numbers[0], numbers[1])
        if parts[0] == "exp" and len(numbers) == 1:
            return cls("exp", numbers[0])
        raise ValueError(_latency_help(spec))

    def sample(self, rng: random.Random) -> float:
        if self.shape == "fixed":
            return self.a
        if self.shape == "uniform":
            return rng.uniform(self.a, self.b)
        if self.shape == "exp" and self.a > 0:
            return rng.expovariate(1.0 / self.a)
        return 0.0


def _latency_help(spec: str) -> str:
    return (
        f"latency {spec!r} is not understood: use seconds ('0.1'), 'uniform:MIN:MAX' "
        "or 'exp:MEAN' (all non-negative numbers)"
    )


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What the server does wrong on purpose; every fault is off by default.

    Faults apply to /v1/* requests only. Rates are probabilities per request, drawn from one
    random generator seeded with `seed` so that a failing chaos run can be replayed.
    """

    latency: str = ""  # "0.1" fixed, "uniform:0.05:0.2", "exp:0.1" (mean), seconds
    error_rate: float = 0.0  # answered 500/502/503 with Miso's 500 body
    throttle_rate: float = 0.0  # answered 429 with Retry-After
    retry_after: float = 1.0  # seconds, sent on 429 answers
    fail_first: int = 0  # the first N /v1 requests get fail_status
    fail_status: int = 503
    max_body_bytes: int = 0  # 0 = unlimited; larger bodies get 413
    drop_rate: float = 0.0  # connection closed with no answer, nothing stored
    lost_answer_rate: float = 0.0  # request processed and stored, then the answer is lost
    stall_rate: float = 0.0  # answer delayed by stall_seconds (nothing stored if client leaves)
    stall_seconds: float = 60.0
    reject_user_id: str = ""  # regex searched in each interaction's user_id -> 422 line
    task_reject_id: str = ""  # regex searched in product_id/user_id -> error in _status
    task_throttle_first: int = 0  # the first N task-status polls get 429 with Retry-After
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "throttle_rate", "drop_rate", "lost_answer_rate", "stall_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault {name} must be between 0 and 1, got {rate}")
        for name in ("retry_after", "stall_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"fault {name} must be a non-negative number of seconds")
        for name in ("fail_first", "max_body_bytes", "task_throttle_first"):
            if getattr(self, name) < 0:
                raise ValueError(f"fault {name} must not be negative")
        if not 400 <= self.fail_status <= 599:
            raise ValueError(
                f"fault fail_status must be an HTTP error (400-599): {self.fail_status}"
            )
        Latency.parse(self.latency)
        for name in ("reject_user_id", "task_reject_id"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"fault {name} is not a valid regular expression: {exc}") from None


OverCapacity = Literal["reject", "queue"]


class Capacity(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """How many /v1 requests the server serves at once, and what happens to the rest.

    Not a fault: a real service has a capacity, and an adaptive client is judged against it.
    The service time of each request is the latency fault, spent while holding a place.
    """

    limit: int = 0  # requests served at once; 0 = unlimited
    over_capacity: OverCapacity = "reject"  # 429 with Retry-After, or wait in a FIFO queue
    retry_after: float = 1.0  # seconds, sent on the capacity 429s

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"capacity must not be negative (0 = unlimited), got {self.limit}")
        if not (math.isfinite(self.retry_after) and self.retry_after >= 0):
            raise ValueError("capacity retry_after must be a non-negative number of seconds")


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How `backfill serve` runs. Keys left None are generated at start and printed once."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 = pick a free port
    store: StoreKind = "sqlite"
    db: str | None = None  # sqlite file; default DEFAULT_DB
    secret_key: str | None = None
    publishable_key: str | None = None
    validate: bool = True  # False skips schema checks (benchmarks: the server must cost little)
    faults: Faults = msgspec.field(default_factory=Faults)
    capacity: Capacity = msgspec.field(default_factory=Capacity)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        for name in ("secret_key", "publishable_key"):
            if getattr(self, name) == "":
                raise ValueError(f"{name} must not be empty (leave it unset to generate one)")
        if self.secret_key is not None and self.secret_key == self.publishable_key:
            raise ValueError("the secret and publishable keys must differ")

    def __repr__(self) -> str:
        """Never shows a key: configs end up in logs and test failure output."""
        return (
            f"ServerConfig(host={self.host!r}, port={self.port}, store={self.store!r}, "
            f"db={self.db!r}, validate={self.validate}, faults={self.faults!r}, "
            f"capacity={self.capacity!r})"
        )

    @property
    def db_path(self) -> str:
        return self.db or DEFAULT_DB
