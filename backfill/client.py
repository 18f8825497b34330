"""One HTTP call to the Miso API and the classification of its answer, in one place.

Every status code the contract knows (and the undocumented ones a robust client must
expect) is mapped here to an `Answer`; backfill.delivery acts on the answer's type and never
looks at status codes itself. A 2xx is an acknowledgement only in Miso's words.
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
    """A 2xx in Miso's words. `errors` names records a 200 still refused (products, users);
    `data` is the answer's `data` (the ids of a listing, the lines of a task status)."""

    errors: dict[int, str] = field(default_factory=dict)
    task_id: str | None = None
    data: object = field(default=None, compare=False)  # the answer's `data`, as decoded


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
    # derived from the status (so not compared): the API is overloaded (429, 5xx except 501,
    # a timeout) and adaptive concurrency backs off; the status as a metric label
    backpressure: bool = field(default=False, compare=False)
    label: str = field(default="connection", compare=False)  # "429", "503", "timeout"


@dataclass(frozen=True, slots=True)
class Fatal:
    error: NeedsUser


@dataclass(frozen=True, slots=True)
class NotFound(Fatal):
    """404: fatal for an upload (a wrong --endpoint), "not known yet" for a task status."""


Answer = Accepted | SchemaRejected | TooLarge | Retryable | Fatal

# and every other 5xx but 501 (Not Implemented: no retry makes it implemented)
RETRY_STATUSES = frozenset({408, 425, 429})
SUCCESS_MESSAGES = frozenset({"success", "deleted"})
DEFAULT_KEY_SOURCE = "$MISO_API_KEY"


class _Body(msgspec.Struct):
    message: str | None = None
    errors: bool | msgspec.UnsetType = msgspec.UNSET
    data: object = None


def classify(
    status: int,
    headers: Mapping[str, str] | None,
    payload: bytes,
    *,
    key_source: str = DEFAULT_KEY_SOURCE,
) -> Answer:
    """`headers` must look up names case-insensitively (aiohttp's CIMultiDictProxy does).

    `key_source` says where the key came from ("$MISO_API_KEY", "--api-key-file k.txt"), so
    a 401 points at what to fix; the key itself is never part of an answer.
    """
    headers = headers or {}
    if 200 <= status < 300:
        return _success(status, headers, payload)
    if 300 <= status < 400:
        return Fatal(ServerRefused(_redirect_message(status, headers)))
    body = _decode(payload) or _Body()
    if status == 422:
        lines = body.data if isinstance(body.data, list) else []
        return SchemaRejected(_indexed(lines), body.message or _snippet(payload))
    if status == 413:
        return TooLarge()
    if status in RETRY_STATUSES or (500 <= status < 600 and status != 501):
        retry_after = _retry_after(headers.get("Retry-After"))
        return Retryable(f"HTTP {status}", retry_after, backpressure=True, label=str(status))
    if status == 400 and b"timeout" in payload.lower():  # Miso's own server-side timeout
        return Retryable("HTTP 400 request timeout", backpressure=True, label="400")
    if status == 401:
        return Fatal(
            AuthRefused(f"the API key was refused (HTTP 401): check the key in {key_source}")
        )
    if status == 403:
        return Fatal(
            KeyForbidden(
                "HTTP 403: the key is not allowed to upload from a server. A publishable key "
                "only works from a browser; use the environment's secret key"
            )
        )
    refused = ServerRefused(f"the server answered HTTP {status}: {_snippet(payload)}")
    return NotFound(refused) if status == 404 else Fatal(refused)


def _success(status: int, headers: Mapping[str, str], payload: bytes) -> Answer:
    """A 2xx acknowledges only in Miso's words: anything else (a proxy's or a login page's
    HTML, an empty body, JSON of another shape) may or may not have stored the batch, so it
    is a failed attempt that may have been stored (ambiguous), retried like a lost answer."""
    body = _decode(payload)
    if body is None or not (
        body.message in SUCCESS_MESSAGES
        or (isinstance(body.errors, bool) and isinstance(body.data, list))
    ):
        reason = _not_miso(status, headers, payload)
        return Retryable(reason, ambiguous=True, label=str(status))
    lines = body.data if body.errors is True and isinstance(body.data, list) else []
    return Accepted(errors=_indexed(lines), task_id=_task_id(body.data), data=body.data)


def _not_miso(status: int, headers: Mapping[str, str], payload: bytes) -> str:
    kind = headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    if "html" in kind:
        hint = "is a proxy or a login page in the way?"
    elif not payload.strip():
        hint = "an empty body, not Miso's answer"
    else:
        hint = f"not Miso's answer: {_snippet(payload, 120)}"
    return f"{status} {kind}: {hint}"


def _redirect_message(status: int, headers: Mapping[str, str]) -> str:
    location = headers.get("Location") or "(no Location)"
    return (
        f"the server answered HTTP {status} redirecting to {location}: backfill never follows "
        "redirects (the key would leave for another origin); check --endpoint"
    )


def label(answer: Answer) -> str:
    """The answer's status as a metric label: "2xx", "413", "422", "429", "timeout",
    "connection" (no answer), or "refused" (a fatal answer: 3xx, 401, 403, 404, other 4xx)."""
    if isinstance(answer, Accepted):
        return "2xx"
    if isinstance(answer, SchemaRejected):
        return "422"
    if isinstance(answer, TooLarge):
        return "413"
    if isinstance(answer, Retryable):
        return answer.label
    return "refused"


def describe(answer: Answer) -> str:
    """One line for a person: what this answer was."""
    if isinstance(answer, Retryable):
        return answer.reason
    if isinstance(answer, SchemaRejected):
        return answer.message
    if isinstance(answer, TooLarge):
        return "HTTP 413: the body is too large for the server"
    if isinstance(answer, Fatal):
        return str(answer.error)
    if answer.errors:
        return next(iter(answer.errors.values()))
    return "accepted"


def _decode(payload: bytes) -> _Body | None:
    try:
        return msgspec.json.decode(payload, type=_Body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


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


@dataclass(frozen=True, slots=True)
class Request:
    """One body on its way; `records` lets a layer weigh it (a rate cap counts records).
    With `path`, a GET of that API path instead (a task status): a request to every limit."""

    body: bytes
    records: int
    path: str | None = None


class MisoClient:
    """Sends bodies to one endpoint with the key in a header (or, on request, the query).

    Redirects are never followed: aiohttp would turn a POST into a bodiless GET on 302/303
    and re-send the body and the key to another origin on 307/308. A 3xx is classified as
    fatal instead, naming its Location.
    """

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
        self._key_params: dict[str, str] = {}
        if key_in_query:
            self._key_params["api_key"] = secret.reveal()
        else:
            self._headers["X-API-KEY"] = secret.reveal()
        self._params = dict(self._key_params)
        if server_dry_run:
            self._params["dry_run"] = "1"

    @property
    def url(self) -> str:
        """The URL without any key: safe to print."""
        return self._url

    async def send(self, request: Request) -> Answer:
        """The Service of backfill.delivery: one attempt at one body (or one GET)."""
        if request.path is not None:
            return await self.fetch(request.path)
        return await self._call(self._method, self._url, request.body, self._params)

    async def fetch(self, path: str) -> Answer:
        """GET a path of the API (a task status, the id listing), classified the same way."""
        return await self._call("GET", self._base + path, None, self._key_params)

    async def _call(
        self, method: str, url: str, body: bytes | None, params: dict[str, str]
    ) -> Answer:
        try:
            async with self._session.request(
                method,
                url,
                data=body,
                headers=self._headers,
                params=params or None,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                return classify(resp.status, resp.headers, payload, key_source=self._secret.source)
        except TimeoutError:
            return Retryable(
                "request timed out", ambiguous=True, backpressure=True, label="timeout"
            )
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            return Retryable(self._secret.redact(f"cannot connect: {exc}"))
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"connection lost: {type(exc).__name__}: {exc}"
            return Retryable(self._secret.redact(reason), ambiguous=True)
