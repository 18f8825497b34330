"""The client: one HTTP call and the classification of its answer (client.classify)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from backfill.client import (
    Accepted,
    Fatal,
    NotFound,
    Retryable,
    SchemaRejected,
    TooLarge,
    classify,
)
from backfill.errors import AuthRefused, KeyForbidden, ServerRefused
from backfill.server import RunningServer
from tests.server_fixtures import miso, product, server_config, upload_body, user  # noqa: F401


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


@pytest.mark.parametrize(
    "payload",
    [
        b'{"message":"success"}',
        b'{"message": "success", "data": {"task_id": "t-1"}, "took": 3}',
        b'{"message":"deleted","data":{"task_id":"t-2"}}',
        b'{"took": 5, "errors": false, "data": []}',  # Miso's own mock server
        b'{"took":100,"errors":false,"data":[],"code":200}',  # the mock's task status
    ],
)
def test_misos_success_shapes_acknowledge(payload: bytes) -> None:
    assert isinstance(classify(200, {}, payload), Accepted)


@pytest.mark.parametrize(
    ("content_type", "payload", "said"),
    [
        ("text/html; charset=utf-8", b"<html><form>Sign in</form></html>", "200 text/html: "
         "is a proxy or a login page in the way?"),
        ("application/json", b"", "200 application/json: an empty body, not Miso's answer"),
        ("application/json", b'{"status": "ok"}', '200 application/json: not Miso\'s answer: '
         '{"status": "ok"}'),
        ("application/json", b"[]", "200 application/json: not Miso's answer: []"),
        ("application/json", b'{"message": "ok"}', "not Miso's answer"),
        ("", b"OK", "200 no content type: not Miso's answer: OK"),
    ],
)  # fmt: skip
def test_anything_else_in_a_2xx_is_an_ambiguous_failed_attempt(
    content_type: str, payload: bytes, said: str
) -> None:
    answer = classify(200, {"Content-Type": content_type}, payload)
    assert isinstance(answer, Retryable) and answer.ambiguous
    assert said in answer.reason


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_fatal_and_names_its_location(status: int) -> None:
    answer = classify(status, {"Location": "https://other.example/login"}, b"")
    assert isinstance(answer, Fatal) and isinstance(answer.error, ServerRefused)
    assert str(answer.error) == (
        f"the server answered HTTP {status} redirecting to https://other.example/login: "
        "backfill never follows redirects (the key would leave for another origin); "
        "check --endpoint"
    )


def test_401_names_the_key_source_and_404_is_not_found() -> None:
    answer = classify(401, {}, b'{"message": "invalid api key."}', key_source="$MY_KEY")
    assert isinstance(answer, Fatal)
    assert str(answer.error) == "the API key was refused (HTTP 401): check the key in $MY_KEY"
    assert isinstance(classify(404, {}, b'{"message": "not found"}'), NotFound)


async def _classified(
    http: aiohttp.ClientSession, method: str, path: str, body: bytes | None = None
) -> Any:
    async with http.request(method, path, data=body, allow_redirects=False) as resp:
        return classify(resp.status, resp.headers, await resp.read())


async def test_the_embedded_server_answers_in_the_accepted_shapes(miso: RunningServer) -> None:  # noqa: F811
    """Every endpoint a load uses, deletes and the task status included, acknowledges."""
    events = (
        b'{"data":[{"type":"home_page_view","user_id":"u1","timestamp":"2026-06-01T00:00:00Z"}]}'
    )
    async with aiohttp.ClientSession(miso.url, headers={"X-API-KEY": miso.secret_key}) as http:
        answers = [
            await _classified(http, "POST", "/v1/interactions", events),
            await _classified(http, "DELETE", "/v1/interactions", b'{"user_ids":["u1"]}'),
        ]
        for kind, record in (("products", product("p1")), ("users", user("u1"))):
            upload = await _classified(http, "POST", f"/v1/{kind}", upload_body([record]))
            assert isinstance(upload, Accepted) and upload.task_id
            one = f"{kind[:-1]}_ids"
            answers += [
                upload,
                await _classified(http, "GET", f"/v1/{kind}/_status/{upload.task_id}"),
                await _classified(http, "GET", f"/v1/{kind}/_ids"),
                await _classified(
                    http, "POST", f"/v1/{kind}/_delete", b'{"data":{"%s":["x"]}}' % one.encode()
                ),
                await _classified(http, "DELETE", f"/v1/{kind}/x1"),
            ]
    assert all(isinstance(a, Accepted) for a in answers), answers
    assert len(answers) == 12


@pytest.mark.parametrize("status", [500, 502, 505, 507, 520, 524, 599])
def test_every_5xx_but_501_is_retried_back_pressure(status: int) -> None:
    """miso-api.md: back off on 5xx; a proxy's 520-524 is a 5xx like any other."""
    answer = classify(status, {"Retry-After": "3"}, b"<html>bad gateway</html>")
    assert answer == Retryable(f"HTTP {status}", 3.0)
    assert isinstance(answer, Retryable) and answer.backpressure and answer.label == str(status)


def test_501_is_fatal() -> None:
    answer = classify(501, {}, b'{"message": "not implemented"}')
    assert isinstance(answer, Fatal) and isinstance(answer.error, ServerRefused)
