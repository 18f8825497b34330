from __future__ import annotations

import time

from backfill.client import Accepted, Fatal, Retryable, SchemaRejected, TooLarge, classify
from backfill.errors import AuthRefused, KeyForbidden, ServerRefused
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


def test_every_answer_is_classified_in_one_place() -> None:
    assert classify(200, {}, b'{"message":"success"}') == Accepted()
    body = (
        b'{"errors":true,"message":"None of the records were inserted","data":'
        b'["data.3.timestamp is invalid. x","data.0 is invalid. y"]}'
    )
    answer = classify(422, {}, body)
    assert isinstance(answer, SchemaRejected) and set(answer.errors) == {0, 3}
    assert classify(422, {}, b"<html>oops</html>") == SchemaRejected({}, "<html>oops</html>")
    assert classify(413, {}, b"") == TooLarge()
    assert classify(429, {"Retry-After": "2.5"}, b"") == Retryable("HTTP 429", 2.5)
    assert classify(503, {}, b"") == Retryable("HTTP 503", None)
    assert isinstance(classify(400, {}, b'{"message:": "Request timeout."}'), Retryable)
    for status, error in ((401, AuthRefused), (403, KeyForbidden), (404, ServerRefused)):
        answer = classify(status, {}, b'{"message": "x"}')
        assert isinstance(answer, Fatal) and isinstance(answer.error, error)
    products = classify(200, {}, b'{"errors":true,"data":["data.1.product_id is invalid. z"]}')
    assert isinstance(products, Accepted) and set(products.errors) == {1}


def test_retry_after_any_case_and_http_dates() -> None:
    from email.utils import formatdate

    from multidict import CIMultiDict, CIMultiDictProxy

    lower = CIMultiDictProxy(CIMultiDict({"retry-after": "3"}))
    assert classify(429, lower, b"") == Retryable("HTTP 429", 3.0)
    later = CIMultiDictProxy(
        CIMultiDict({"Retry-After": formatdate(time.time() + 60, usegmt=True)})
    )
    answer = classify(503, later, b"")
    assert isinstance(answer, Retryable) and answer.retry_after is not None
    assert 50 <= answer.retry_after <= 61
    junk = CIMultiDictProxy(CIMultiDict({"Retry-After": "soon"}))
    assert classify(429, junk, b"") == Retryable("HTTP 429", None)
