"""One HTTP call to the Miso API and the classification of its answer, in one place.

Every status code the contract knows (and the undocumented ones a robust client must
expect) is mapped here to an `Answer`; the engine acts on the answer's type and never looks
at status codes itself.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import msgspec

from backfill.config import Secret
from backfill.errors import AuthRefused, KeyForbidden, NeedsUser, ServerRefused
from backfill.schema import parse_error_index

# -- answers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """2xx. `errors` names records a 200 answer still refused (products and users)."""

    errors: dict[int, str] = field(default_factory=dict)
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class SchemaRejected:
    """422: nothing was stored; `errors` maps body index -> Miso's line. Empty: unparsable."""

    errors: dict[int, str]
    message: str


@dataclass(frozen=True, slots=True)
class TooLarge:
    """413: the body is too large for the server; split it."""


@dataclass(frozen=True, slots=True)
class Retryable:
    """Worth another attempt. `ambiguous`: the request may have been stored (the answer, not
    the request, was lost), so a retry that succeeds may have stored it twice."""

    reason: str
    retry_after: float | None = None
    ambiguous: bool = False


@dataclass(frozen=True, slots=True)
class Fatal:
    error: NeedsUser


Answer = Accepted | SchemaRejected | TooLarge | Retryable | Fatal

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _Body(msgspec.Struct):
    message: str | None = None
    errors: bool = False
    data: object = None


def classify(status: int, headers: Mapping[str, str] | None, payload: bytes) -> Answer:
    """`headers` must look up names case-insensitively (aiohttp's CIMultiDictProxy does)."""
    body = _decode(payload)
    if 200 <= status < 300:
        lines = body.data if body.errors and isinstance(body.data, list) else []
        return Accepted(errors=_indexed(lines), task_id=_task_id(body.data))
    if status == 422:
        lines = body.data if isinstance(body.data, list) else []
        return SchemaRejected(_indexed(lines), body.message or _snippet(payload))
    if status == 413:
        return TooLarge()
    if status in RETRY_STATUSES:
        return Retryable(f"HTTP {status}", _retry_after((headers or {}).get("Retry-After")))
    if status == 400 and b"timeout" in payload.lower():
        return Retryable("HTTP 400 request timeout")  # Miso's own server-side timeout
    if status == 401:
        return Fatal(AuthRefused("the API key was refused (HTTP 401): check MISO_API_KEY"))
    if status == 403:
        return Fatal(
            KeyForbidden(
                "HTTP 403: the key is not allowed to upload from a server. A publishable key "
                "only works from a browser; use the environment's secret key"
            )
        )
    return Fatal(ServerRefused(f"the server answered HTTP {status}: {_snippet(payload)}"))


def _decode(payload: bytes) -> _Body:
    try:
        return msgspec.json.decode(payload, type=_Body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _Body()


def _indexed(lines: list[object]) -> dict[int, str]:
    out: dict[int, str] = {}
    for line in lines:
        if isinstance(line, str) and (index := parse_error_index(line)) is not None:
            out.setdefault(index, line)
    return out


def _task_id(data: object) -> str | None:
    if isinstance(data, dict):
        value = data.get("task_id")
        return value if isinstance(value, str) else None
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _snippet(payload: bytes, limit: int = 300) -> str:
    text = payload[:limit].decode("utf-8", "replace").strip()
    return text or "(empty body)"


# -- the call ----------------------------------------------------------------------------


class MisoClient:
    """POSTs bodies to one endpoint with the key in a header (or, on request, the query)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        path: str,
        secret: Secret,
        *,
        method: str = "POST",
        key_in_query: bool = False,
        server_dry_run: bool = False,
    ) -> None:
        self._session = session
        self._method = method
        self._base = endpoint.rstrip("/")
        self._url = self._base + path
        self._secret = secret
        self._headers = {"Content-Type": "application/json"}
        self._params: dict[str, str] = {}
        if key_in_query:
            self._params["api_key"] = secret.reveal()
        else:
            self._headers["X-API-KEY"] = secret.reveal()
        if server_dry_run:
            self._params["dry_run"] = "1"

    @property
    def url(self) -> str:
        """The URL without any key: safe to print."""
        return self._url

    async def post(self, body: bytes) -> Answer:
        try:
            async with self._session.request(
                self._method,
                self._url,
                data=body,
                headers=self._headers,
                params=self._params or None,
            ) as resp:
                payload = await resp.read()
                return classify(resp.status, resp.headers, payload)
        except TimeoutError:
            return Retryable("request timed out", ambiguous=True)
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            return Retryable(self._secret.redact(f"cannot connect: {exc}"))
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"connection lost: {type(exc).__name__}: {exc}"
            return Retryable(self._secret.redact(reason), ambiguous=True)

    async def task_errors(self, kind: str, task_id: str) -> dict[int, str] | None:
        """Per-record errors of a product/user upload task; None while it is not known yet."""
        url = f"{self._base}/v1/{kind}/_status/{task_id}"
        params = {k: v for k, v in self._params.items() if k == "api_key"} or None
        try:
            async with self._session.get(url, headers=self._headers, params=params) as resp:
                if resp.status != 200:
                    return None
                body = _decode(await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None
        return _indexed(body.data if isinstance(body.data, list) else [])
