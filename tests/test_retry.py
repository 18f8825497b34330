from __future__ import annotations

import time

from backfill.retry import RetryPolicy


def test_full_jitter_is_capped_and_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(max_attempts=5, initial=0.5, cap=4.0)
    for attempt in range(1, 10):
        for _ in range(200):
            assert 0.0 <= policy.delay(attempt) <= min(4.0, 0.5 * 2 ** (attempt - 1))
            assert policy.delay(attempt, retry_after=7.0) >= 7.0


def test_budget_by_attempts_and_elapsed_time() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=10.0)
    now = time.monotonic()
    assert not policy.gives_up(2, now, 1.0)
    assert policy.gives_up(3, now, 0.0)
    assert policy.gives_up(1, now - 9.5, 1.0)
