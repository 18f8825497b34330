"""Miso's answers, byte for byte where the contract gives them (miso-data-api.openapi.json).

Kept in one place so that a client test failing against the real service points at one file.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from backfill.schema import Kind
from backfill.server.faults import THROTTLE_STATUS, format_retry_after

INVALID_KEY = {"message": "invalid api key."}
BOT_BLOCKING = {
    "message": "Request is denied due to bot blocking. Please only access this API from a real "
    "browser or use Secret API Key instead."
}
NOT_FOUND = {"message": "not found"}
SERVER_ERROR = {"message": "Something went wrong. Please contact miso product team."}
REQUEST_TIMEOUT = {"message:": "Request timeout."}  # sic: Miso's key has the colon
TOO_LARGE = {"message": "Request Entity Too Large"}  # undocumented by Miso
THROTTLED = {"message": "Too Many Requests"}  # undocumented by Miso

# The two 422 wordings differ in Miso's own OpenAPI file; clients must not depend on either.
SCHEMA_ERROR_MESSAGE: dict[Kind, str] = {
    "interactions": "None of the records were inserted because at least one of them contained "
    "schema errors. Please see the `data` field for details.",
    "products": "None of the records are inserted, because at least one of them contain schema "
    "errors. Please see `data` field for details.",
    "users": "None of the records are inserted, because at least one of them contain schema "
    "errors. Please see `data` field for details.",
}

_BODY_BY_STATUS: dict[int, dict[str, str]] = {
    400: REQUEST_TIMEOUT,
    401: INVALID_KEY,
    403: BOT_BLOCKING,
    404: NOT_FOUND,
    413: TOO_LARGE,
    THROTTLE_STATUS: THROTTLED,
}


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type="application/json"
    )


def error_response(status: int, retry_after: float | None = None) -> web.Response:
    """The body Miso (or the proxy in front of it) sends with this error status."""
    response = json_response(_BODY_BY_STATUS.get(status, SERVER_ERROR), status)
    if retry_after is not None:
        response.headers["Retry-After"] = format_retry_after(retry_after)
    return response


def schema_error_response(kind: Kind, lines: list[str]) -> web.Response:
    """422: one bad record rejects the whole request; `data` holds one line per bad record."""
    return json_response(
        {"errors": True, "message": SCHEMA_ERROR_MESSAGE[kind], "data": lines}, status=422
    )


def request_error_response(location: list[str | int], message: str, kind: str) -> web.Response:
    """422 for a body that is not the endpoint's shape at all (FastAPI's HTTPValidationError)."""
    detail = {"loc": ["body", *location], "msg": message, "type": kind}
    return json_response({"detail": [detail]}, status=422)


def took_ms(started: float, now: float) -> int:
    return max(0, round((now - started) * 1000))
