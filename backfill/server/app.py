"""The aiohttp application: Miso's Data API under /v1, the test controls under /_admin.

Every /v1 request passes one gate (`v1_gate`) that takes a place under the capacity model
(capacity.py), applies the request's fault plan, then the key check, then the endpoint, and
counts the outcome. The endpoints themselves only decode,
validate (ingest.py) and store (store.py). /_admin needs no key: it is a loopback tool for
tests and operators, which is why the server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, NamedTuple, NoReturn, get_args

import msgspec
from aiohttp import web

from backfill.schema import Kind
from backfill.server import responses
from backfill.server.capacity import CapacityGate
from backfill.server.config import Capacity, Faults, ServerConfig
from backfill.server.faults import THROTTLE_STATUS, FaultHeaderError, FaultInjector
from backfill.server.ingest import (
    AttributeTypes,
    EntityBatch,
    EntityKind,
    Interaction,
    RequestInvalid,
    admit_entities,
    counted_interactions,
    decode_bulk_delete,
    decode_interaction_delete,
    decode_upload,
    entity_objects,
    interactions,
    merge_lines,
    reject_lines,
    schema_lines,
)
from backfill.server.store import ENTITY_KINDS, Counters, Store, StoreError, stats_document

log = logging.getLogger("backfill.server")

MAX_REQUEST_BYTES: Final = 1 << 30  # aiohttp's own cap; the max_body_bytes fault sits below it
TASKS_KEPT: Final = 10_000
ARRIVALS_KEPT: Final = 10_000
HANG_UP_WAIT: Final = 5.0  # closing the transport cancels the handler long before this

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Keys(NamedTuple):
    secret: str
    publishable: str


class Arrival(NamedTuple):
    """When a /v1 request arrived (time.monotonic()): what a test asserts pacing on, at the
    server rather than at the client that paces itself."""

    at: float
    method: str
    path: str


class TaskResult(msgspec.Struct):
    took: int
    lines: list[str]


class TaskBook:
    """Deferred results of product/user tasks; the oldest are forgotten past TASKS_KEPT."""

    def __init__(self) -> None:
        self._results: OrderedDict[str, TaskResult] = OrderedDict()

    def add(self, result: TaskResult) -> str:
        task_id = str(uuid.uuid4())
        self._results[task_id] = result
        if len(self._results) > TASKS_KEPT:
            self._results.popitem(last=False)
        return task_id

    def get(self, task_id: str) -> TaskResult | None:
        return self._results.get(task_id)


class ServerState:
    """Everything the handlers share: keys, store, faults, counters, tasks, attribute types."""

    def __init__(self, config: ServerConfig, keys: Keys, store: Store, counters: Counters) -> None:
        self.config = config
        self.keys = keys
        self.store = store
        self.counters = counters
        self.injector = FaultInjector(config.faults)
        self.capacity = CapacityGate(config.capacity)
        self.tasks = {kind: TaskBook() for kind in ENTITY_KINDS}
        self.attributes = {k: AttributeTypes(store.attribute_types(k)) for k in ENTITY_KINDS}
        self.arrivals: deque[Arrival] = deque(maxlen=ARRIVALS_KEPT)  # the latest ones
        self._commits: set[asyncio.Task[None]] = set()

    def set_faults(self, faults: Faults) -> None:
        self.injector = FaultInjector(faults)

    async def commit(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs a store write to completion even if the client leaves (the handler is cancelled):
        a record the server stored must also be counted, like a real server that already
        committed when the connection broke. `drain` waits for the stragglers at shutdown.
        """
        task = asyncio.ensure_future(work)
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        if self._commits:
            await asyncio.wait(self._commits)

    async def stats(self) -> dict[str, Any]:
        """What the store keeps (what `serve-stats` reads back); /_admin/stats adds capacity."""
        return stats_document(await self.store.counts(), self.counters)

    async def reset(self) -> None:
        await self.drain()
        await self.store.reset()
        self.counters = Counters()
        self.capacity.reset_stats()
        self.injector = FaultInjector(self.injector.faults)
        self.tasks = {kind: TaskBook() for kind in ENTITY_KINDS}
        self.attributes = {kind: AttributeTypes({}) for kind in ENTITY_KINDS}
        self.arrivals.clear()


STATE: Final = web.AppKey("state", ServerState)


class _Dropped(Exception):
    """Raised inside the gate to close the connection without an answer."""


def build_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[v1_gate])
    app[STATE] = state
    app.router.add_post("/v1/interactions", upload_interactions)
    app.router.add_delete("/v1/interactions", delete_interactions)
    for kind in ENTITY_KINDS:
        base = f"/v1/{kind}"
        app.router.add_post(base, _bind(upload_entities, kind))
        app.router.add_get(f"{base}/_ids", _bind(list_ids, kind))
        app.router.add_post(f"{base}/_delete", _bind(bulk_delete, kind))
        app.router.add_get(f"{base}/_status/{{task_id}}", _bind(task_status, kind))
        app.router.add_get(f"{base}/{{record_id}}", _bind(read_entity, kind))
        app.router.add_delete(f"{base}/{{record_id}}", _bind(delete_entity, kind))
    app.router.add_get("/_admin/stats", admin_stats)
    app.router.add_get("/_admin/records", admin_records)
    app.router.add_get("/_admin/faults", admin_get_faults)
    app.router.add_post("/_admin/faults", admin_set_faults)
    app.router.add_get("/_admin/capacity", admin_get_capacity)
    app.router.add_post("/_admin/capacity", admin_set_capacity)
    app.router.add_post("/_admin/reset", admin_reset)
    return app


def _bind(
    endpoint: Callable[[web.Request, EntityKind], Awaitable[web.StreamResponse]], kind: EntityKind
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await endpoint(request, kind)

    return handler


# --- the /v1 gate: faults, then the key, then the endpoint ---------------------------------


@web.middleware
async def v1_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    state = request.app[STATE]
    state.counters.requests_received += 1
    state.arrivals.append(Arrival(time.monotonic(), request.method, request.path))
    try:
        response = await _through_gate(state, request, handler)
    except _Dropped:
        state.counters.count("dropped")
        await _hang_up(request)
    except asyncio.CancelledError:
        state.counters.count("abandoned")  # the client left (timeout) or the server stops
        raise
    state.counters.count(str(response.status))
    return response


async def _through_gate(
    state: ServerState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    gate = state.capacity
    if not await gate.enter():
        await request.read()  # an unread body would make the close send RST
        return responses.error_response(THROTTLE_STATUS, gate.capacity.retry_after)
    try:
        return await _apply_plan(state, request, handler)
    except web.HTTPException as exc:  # no such route, method not allowed, over aiohttp's cap
        return _as_miso_error(exc)
    except FaultHeaderError as exc:
        return responses.json_response({"message": str(exc)}, 400)
    except RequestInvalid as exc:
        return responses.request_error_response([], str(exc), exc.error_type)
    except StoreError:
        log.exception("store failure while serving %s %s", request.method, request.path)
        return responses.error_response(500)
    finally:
        gate.leave()


async def _apply_plan(
    state: ServerState, request: web.Request, handler: Handler
) -> web.StreamResponse:
    injector = state.injector
    plan = injector.plan(request.headers)
    if plan.latency > 0:
        await asyncio.sleep(plan.latency)
    if injector.too_large(request.content_length or 0):
        return responses.error_response(413)
    body = await request.read()  # read before any hang-up: closing on unread data sends RST
    if injector.too_large(len(body)):
        return responses.error_response(413)
    if plan.drop:
        raise _Dropped
    if plan.stall > 0:
        await asyncio.sleep(plan.stall)  # cancelled, storing nothing, if the client gives up
    if plan.status is not None:
        return responses.error_response(plan.status, plan.retry_after)
    refusal = _authorize(state.keys, request)
    if refusal is not None:
        return refusal
    response = await handler(request)
    if plan.lost_answer:
        raise _Dropped
    return response


async def _hang_up(request: web.Request) -> NoReturn:
    """Closes the connection unanswered; aiohttp then cancels this handler at once."""
    transport = request.transport
    if transport is not None:
        transport.close()
    await asyncio.sleep(HANG_UP_WAIT)
    raise ConnectionResetError("fault injection closed the connection")


def _authorize(keys: Keys, request: web.Request) -> web.Response | None:
    """Miso's rule: the secret key opens everything; the publishable key only browser uploads."""
    key = request.headers.get("X-API-KEY") or request.query.get("api_key") or ""
    if _same(key, keys.secret):
        return None
    if _same(key, keys.publishable):
        from_browser = "Mozilla/" in request.headers.get("User-Agent", "")
        upload = request.method == "POST" and request.path == "/v1/interactions"
        return None if (from_browser and upload) else responses.error_response(403)
    return responses.error_response(401)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _as_miso_error(exc: web.HTTPException) -> web.Response:
    if exc.status in (404, 413):
        return responses.error_response(exc.status)
    response = responses.json_response({"message": exc.reason}, exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _dry_run(request: web.Request) -> bool:
    return request.query.get("dry_run", "").lower() in ("1", "true", "yes")


# --- interactions ------------------------------------------------------------------------


async def upload_interactions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    body = await request.read()
    if state.config.store == "null" and not state.config.validate:
        items = counted_interactions(body)  # counts only: one decoding pass, no record copies
        records: list[bytes] = []
    else:
        records = decode_upload(body)
        items = interactions(body, records)
    lines = merge_lines(
        schema_lines("interactions", records, state.config.validate),
        reject_lines(items, state.injector.rejects_user),
    )
    if lines:
        return responses.schema_error_response("interactions", lines)
    if items and not _dry_run(request):
        await state.commit(_store_interactions(state, items))
    took = responses.took_ms(started, time.perf_counter())
    return responses.json_response(
        {"message": "success", "took": took, "errors": False, "data": []}
    )


async def _store_interactions(state: ServerState, items: list[Interaction]) -> None:
    await state.store.add_interactions(items)
    state.counters.records_received += len(items)


async def delete_interactions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    user_ids = decode_interaction_delete(await request.read())
    if user_ids and not _dry_run(request):
        await state.commit(_forget_users(state, user_ids))
    return responses.json_response({"message": "success"})


async def _forget_users(state: ServerState, user_ids: list[str]) -> None:
    state.counters.deleted += await state.store.delete_interactions(user_ids)


# --- products and users ------------------------------------------------------------------


async def upload_entities(request: web.Request, kind: EntityKind) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    records = decode_upload(await request.read())
    objects, id_lines = entity_objects(kind, records)
    lines = merge_lines(schema_lines(kind, records, state.config.validate), id_lines)
    if lines:
        return responses.schema_error_response(kind, lines)
    task_lines: list[str] = []
    if records and not _dry_run(request):
        batch = admit_entities(
            kind, objects, records, state.attributes[kind], state.injector.rejects_in_task
        )
        await state.commit(_store_entities(state, kind, batch, len(records)))
        task_lines = batch.task_lines
    task_id = state.tasks[kind].add(
        TaskResult(responses.took_ms(started, time.perf_counter()), task_lines)
    )
    return responses.json_response({"message": "success", "data": {"task_id": task_id}})


async def _store_entities(
    state: ServerState, kind: EntityKind, batch: EntityBatch, received: int
) -> None:
    await state.store.upsert(kind, batch.accepted, batch.new_attribute_types)
    state.counters.records_received += received


async def read_entity(request: web.Request, kind: EntityKind) -> web.StreamResponse:
    state = request.app[STATE]
    raw = await state.store.get(kind, request.match_info["record_id"])
    if raw is None:
        return responses.error_response(404)
    body = b'{"message":"success","data":' + raw + b"}"
    return web.Response(body=body, content_type="application/json")


async def list_ids(request: web.Request, kind: EntityKind) -> web.StreamResponse:
    ids = await request.app[STATE].store.ids(kind)
    return responses.json_response({"message": "success", "data": {"ids": ids}})


async def delete_entity(request: web.Request, kind: EntityKind) -> web.StreamResponse:
    return await _delete_entities(request, kind, [request.match_info["record_id"]])


async def bulk_delete(request: web.Request, kind: EntityKind) -> web.StreamResponse:
    return await _delete_entities(request, kind, decode_bulk_delete(kind, await request.read()))


async def _delete_entities(
    request: web.Request, kind: EntityKind, record_ids: list[str]
) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    if record_ids and not _dry_run(request):
        await state.commit(_remove_entities(state, kind, record_ids))
    task_id = state.tasks[kind].add(TaskResult(responses.took_ms(started, time.perf_counter()), []))
    return responses.json_response({"message": "deleted", "data": {"task_id": task_id}})


async def _remove_entities(state: ServerState, kind: EntityKind, record_ids: list[str]) -> None:
    await state.store.delete(kind, record_ids)


async def task_status(request: web.Request, kind: EntityKind) -> web.StreamResponse:
    state = request.app[STATE]
    if state.injector.throttles_poll():
        return responses.error_response(THROTTLE_STATUS, state.injector.faults.retry_after)
    result = state.tasks[kind].get(request.match_info["task_id"])
    if result is None:
        return responses.error_response(404)
    return responses.json_response(
        {"took": result.took, "errors": bool(result.lines), "data": result.lines, "code": 200}
    )


# --- /_admin: no key, loopback tooling ----------------------------------------------------


async def admin_stats(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return responses.json_response({**await state.stats(), "capacity": state.capacity.stats()})


async def admin_records(request: web.Request) -> web.StreamResponse:
    """JSON lines of the stored records of `?kind=` in arrival order."""
    kinds: tuple[Kind, ...] = get_args(Kind)
    kind = next((k for k in kinds if k == request.query.get("kind", "interactions")), None)
    if kind is None:
        return responses.json_response({"message": f"kind must be one of {kinds}"}, 400)
    chunks = request.app[STATE].store.chunks(kind)
    empty: list[bytes] = []
    try:
        first = await anext(chunks, empty)
    except StoreError as exc:
        return responses.json_response({"message": str(exc)}, 400)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    chunk = first
    while chunk:
        await response.write(b"\n".join(chunk) + b"\n")
        chunk = await anext(chunks, empty)
    await response.write_eof()
    return response


async def admin_get_faults(request: web.Request) -> web.StreamResponse:
    return responses.json_response(request.app[STATE].injector.faults)


async def admin_set_faults(request: web.Request) -> web.StreamResponse:
    """Replaces every fault (unspecified fields go back to off) and restarts fail_first."""
    try:
        faults = msgspec.json.decode(await request.read() or b"{}", type=Faults)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        return responses.json_response({"message": f"faults: {exc}"}, 400)
    request.app[STATE].set_faults(faults)
    return responses.json_response(faults)


async def admin_reset(request: web.Request) -> web.StreamResponse:
    await request.app[STATE].reset()
    return responses.json_response({"message": "reset"})


async def admin_get_capacity(request: web.Request) -> web.StreamResponse:
    return responses.json_response(request.app[STATE].capacity.capacity)


async def admin_set_capacity(request: web.Request) -> web.StreamResponse:
    """Changes only the given fields (unlike faults): a test raises the limit in one call."""
    gate = request.app[STATE].capacity
    try:
        changes = msgspec.json.decode(await request.read() or b"{}", type=dict[str, Any])
        capacity = msgspec.convert(
            msgspec.structs.asdict(gate.capacity) | changes, Capacity, strict=False
        )
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        return responses.json_response({"message": f"capacity: {exc}"}, 400)
    gate.update(capacity)
    return responses.json_response(capacity)
