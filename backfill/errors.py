"""The one exception tree of backfill; each class knows the exit code it ends a run with.

BackfillError                 any failure we expect and can explain (no traceback shown)
├── UsageError                bad flags, config or inputs                        exit 2
│   ├── InputChanged          a resumed input file differs from the checkpoint   exit 2
│   └── CheckpointLost        an earlier run's checkpoint is missing or empty    exit 2
├── StateLocked               another process holds the state dir                exit 2
├── Abandoned                 a batch given up because the run is stopping (the stop's code)
└── NeedsUser                 stopped; resumable once the user acts              exit 3
    ├── AuthRefused           401: the API key was refused
    ├── KeyForbidden          403: a publishable key cannot upload from a server
    ├── ServerRefused         an answer no retry can fix (404, 3xx, ...), or refusals
    │                         of records wholesale (--max-rejected-ratio)
    ├── RetriesExhausted      429/5xx/timeouts outlasted the retry budget
    ├── StateUnwritable       the state dir is full (or its disk failing)
    └── TooManyInvalid        the input plainly has the wrong shape
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NEEDS_USER = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# how a leg ended, in the words of the report and of `backfill status`: one table for both
STATUS_BY_CODE = {EXIT_OK: "completed", EXIT_SIGINT: "interrupted", EXIT_SIGTERM: "interrupted"}


def run_status(code: int | None, *, all_done: bool = True) -> str:
    """`code` None: no leg ended (one is running, or was killed). A clean leg that left
    files unread (a shard's, a --processes worker's) has stopped, not completed."""
    if code is None:
        return "running or killed"
    status = STATUS_BY_CODE.get(code, "stopped")
    return "stopped" if status == "completed" and not all_done else status


class BackfillError(Exception):
    exit_code = EXIT_NEEDS_USER


class UsageError(BackfillError):
    exit_code = EXIT_USAGE


class InputChanged(UsageError):
    pass


class CheckpointLost(UsageError):
    pass


class StateLocked(BackfillError):
    exit_code = EXIT_USAGE


class Abandoned(BackfillError):
    """A batch given up in a retry backoff because the run is stopping; never shown."""


class NeedsUser(BackfillError):
    exit_code = EXIT_NEEDS_USER


class AuthRefused(NeedsUser):
    pass


class KeyForbidden(NeedsUser):
    pass


class ServerRefused(NeedsUser):
    pass


class RetriesExhausted(NeedsUser):
    pass


class StateUnwritable(NeedsUser):
    pass


class InputUnreadable(NeedsUser):
    pass


class TooManyInvalid(NeedsUser):
    pass
