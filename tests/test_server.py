"""The embedded Miso server over real HTTP on 127.0.0.1: endpoints, keys, 422 bodies, faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from backfill.errors import UsageError
from backfill.server import (
    Faults,
    Latency,
    RunningServer,
    ServerConfig,
    ServerError,
    StoreError,
    read_stats,
    start_server,
)
from backfill.server.command import add_parsers, config_from_args
from backfill.server.faults import FaultInjector
from tests import server_fixtures
from tests.server_fixtures import (
    AUTH,
    BROWSER_UA,
    PUBLISHABLE,
    SECRET,
    compact,
    event,
    eventually,
    product,
    server_config,
    upload_body,
    user,
)

SERVER_ERROR = {"message": "Something went wrong. Please contact miso product team."}
INTERACTIONS_422 = (
    "None of the records were inserted because at least one of them contained schema errors. "
    "Please see the `data` field for details."
)
ENTITIES_422 = (
    "None of the records are inserted, because at least one of them contain schema errors. "
    "Please see `data` field for details."
)
BOT_BLOCKING = {
    "message": "Request is denied due to bot blocking. Please only access this API from a real "
    "browser or use Secret API Key instead."
}
# the shared fixtures, bound here so that pytest finds them in this module
miso = server_fixtures.miso
miso_sqlite = server_fixtures.miso_sqlite
http = server_fixtures.http

ID_FIELD = {"products": "product_id", "users": "user_id"}
ENTITY: dict[str, Callable[..., dict[str, Any]]] = {"products": product, "users": user}


async def post_json(
    http: aiohttp.ClientSession, path: str, body: bytes, **kwargs: Any
) -> tuple[int, Any]:
    async with http.post(path, data=body, **kwargs) as response:
        return response.status, await response.json(content_type=None)


def lines_index(lines: list[str]) -> list[int]:
    """The record index each 422 line names ("data.3.user_id is invalid. ...": 3)."""
    return [int(line.split(".")[1].split(" ")[0]) for line in lines]


# --- interactions ----------------------------------------------------------------------------


async def test_interactions_upload_stores_exact_bytes(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    records = [event(i) for i in range(5)] + [event(9, kind="like")]
    status, answer = await post_json(http, "/v1/interactions", upload_body(records))
    assert status == 200
    assert answer == {"message": "success", "took": answer["took"], "errors": False, "data": []}
    assert isinstance(answer["took"], int)
    assert miso.records("interactions") == [compact(r) for r in records]
    stats = await miso.stats()
    assert stats["interactions"] == {
        "total": 6,
        "by_type": {"like": 1, "product_detail_page_view": 5},
        "duplicates": 0,
        "deleted": 0,
    }
    assert stats["records_received"] == 6
    assert stats["requests"] == {"total": 1, "received": 1, "by_status": {"200": 1}}


async def test_exact_duplicates_are_counted(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = upload_body([event(i) for i in range(3)])
    for _ in range(2):
        assert (await post_json(http, "/v1/interactions", body))[0] == 200
    # same record, different bytes (spacing): not an exact duplicate
    spaced = json.dumps({"data": [event(0)]}).encode()
    assert (await post_json(http, "/v1/interactions", spaced))[0] == 200
    stats = await miso.stats()
    assert stats["interactions"]["total"] == 7
    assert stats["interactions"]["duplicates"] == 3


async def test_any_content_type_is_accepted(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = upload_body([event(1)])
    status, _ = await post_json(
        http, "/v1/interactions", body, headers={"Content-Type": "text/plain"}
    )
    assert status == 200
    assert miso.records("interactions") == [compact(event(1))]


async def test_delete_interactions_forgets_users(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    records = [event(i, user=f"u{i % 3}") for i in range(9)]
    await post_json(http, "/v1/interactions", upload_body(records))
    async with http.delete("/v1/interactions", json={"user_ids": ["u0", "u2", "nobody"]}) as r:
        assert r.status == 200
        assert await r.json() == {"message": "success"}
    assert miso.records("interactions") == [compact(r) for r in records if r["user_id"] == "u1"]
    stats = await miso.stats()
    assert stats["interactions"]["total"] == 3
    assert stats["interactions"]["deleted"] == 6


async def test_delete_interactions_needs_user_ids(http: aiohttp.ClientSession) -> None:
    async with http.delete("/v1/interactions", json={"users": ["u0"]}) as r:
        assert r.status == 422
        assert list(await r.json()) == ["detail"]


async def test_empty_upload_is_a_success(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await post_json(http, "/v1/interactions", b'{"data": []}'))[0] == 200
    assert (await miso.stats())["interactions"]["total"] == 0


# --- products and users --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["products", "users"])
async def test_entity_lifecycle(
    kind: str, miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    make = ENTITY[kind]
    first = [make("a"), make("b", custom_attributes={"tier": "gold"}), make("c")]
    status, answer = await post_json(http, f"/v1/{kind}", upload_body(first))
    assert status == 200
    assert answer["message"] == "success"
    task_id = answer["data"]["task_id"]
    async with http.get(f"/v1/{kind}/_status/{task_id}") as r:
        assert r.status == 200
        task = await r.json()
        assert task == {"took": task["took"], "errors": False, "data": [], "code": 200}

    async with http.get(f"/v1/{kind}/b") as r:
        assert r.status == 200
        assert await r.json() == {
            "message": "success",
            "data": make("b", custom_attributes={"tier": "gold"}),
        }
    async with http.get(f"/v1/{kind}/_ids") as r:
        assert await r.json() == {"message": "success", "data": {"ids": ["a", "b", "c"]}}

    # an upload replaces the whole record: the old title is gone
    replacement = {ID_FIELD[kind]: "a"}
    await post_json(http, f"/v1/{kind}", upload_body([replacement]))
    async with http.get(f"/v1/{kind}/a") as r:
        assert (await r.json())["data"] == replacement

    async with http.delete(f"/v1/{kind}/b") as r:
        assert r.status == 200
        deleted = await r.json()
        assert deleted["message"] == "deleted"
        assert isinstance(deleted["data"]["task_id"], str)
    async with http.get(f"/v1/{kind}/b") as r:
        assert r.status == 404
        assert await r.json() == {"message": "not found"}

    bulk = {"data": {f"{ID_FIELD[kind]}s": ["a", "zzz"]}}
    async with http.post(f"/v1/{kind}/_delete", json=bulk) as r:
        assert r.status == 200
        assert (await r.json())["message"] == "deleted"
    async with http.get(f"/v1/{kind}/_ids") as r:
        assert (await r.json())["data"]["ids"] == ["c"]
    assert miso.records(kind) == [compact(make("c"))]  # type: ignore[arg-type]
    assert (await miso.stats())[kind] == {"total": 1}


async def test_bulk_delete_body_is_checked(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/products/_delete", json={"data": {"user_ids": ["a"]}}) as r:
        assert r.status == 422


async def test_ids_are_url_decoded(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    odd = "shoe/42 red?&#%"
    await post_json(http, "/v1/products", upload_body([product(odd)]))
    async with http.get(f"/v1/products/{quote(odd, safe='')}") as r:
        assert r.status == 200
        assert (await r.json())["data"]["product_id"] == odd


async def test_unknown_task_is_not_found(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/users/_status/no-such-task") as r:
        assert r.status == 404
        assert await r.json() == {"message": "not found"}


async def test_custom_attribute_types_stay_consistent(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    batch = [
        product("a", custom_attributes={"year": 1999, "cast": ["x", "y"]}),
        product("b", custom_attributes={"year": "1999"}),  # number -> string: refused
        product("c", custom_attributes={"year": 2001.5, "cast": "z"}),
        product("d", custom_attributes={"cast": [1]}),  # string family -> number: refused
    ]
    _, answer = await post_json(http, "/v1/products", upload_body(batch))
    async with http.get(f"/v1/products/_status/{answer['data']['task_id']}") as r:
        task = await r.json()
    assert task["errors"] is True
    assert task["data"] == [
        "data.1.custom_attributes.year is invalid. The attribute type 'string' differs from "
        "type 'number' that other records use for this key.",
        "data.3.custom_attributes.cast is invalid. The attribute type 'number' differs from "
        "type 'string' that other records use for this key.",
    ]
    async with http.get("/v1/products/_ids") as r:
        assert (await r.json())["data"]["ids"] == ["a", "c"]
    # the rule spans requests, and is per kind
    _, answer = await post_json(
        http, "/v1/products", upload_body([product("e", custom_attributes={"year": True})])
    )
    async with http.get(f"/v1/products/_status/{answer['data']['task_id']}") as r:
        assert lines_index((await r.json())["data"]) == [0]
    _, answer = await post_json(
        http, "/v1/users", upload_body([user("u", custom_attributes={"year": "old"})])
    )
    async with http.get(f"/v1/users/_status/{answer['data']['task_id']}") as r:
        assert (await r.json())["errors"] is False


# --- dry_run ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "record"),
    [("/v1/interactions", event(1)), ("/v1/products", product("p")), ("/v1/users", user("u"))],
)
async def test_dry_run_validates_and_stores_nothing(
    path: str, record: dict[str, Any], miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, _ = await post_json(http, path + "?dry_run=1", upload_body([record]))
    assert status == 200
    bad = dict(record, unknown_field=1)
    status, answer = await post_json(http, path + "?dry_run=1", upload_body([record, bad]))
    assert status == 422
    assert lines_index(answer["data"]) == [1]
    stats = await miso.stats()
    assert (stats["interactions"]["total"], stats["products"]["total"]) == (0, 0)
    assert (stats["users"]["total"], stats["records_received"]) == (0, 0)


async def test_dry_run_deletes_nothing(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    await post_json(http, "/v1/interactions", upload_body([event(1, user="u")]))
    await post_json(http, "/v1/products", upload_body([product("p")]))
    async with http.delete("/v1/interactions?dry_run=1", json={"user_ids": ["u"]}) as r:
        assert r.status == 200
    async with http.delete("/v1/products/p?dry_run=1") as r:
        assert r.status == 200
    stats = await miso.stats()
    assert (stats["interactions"]["total"], stats["products"]["total"]) == (1, 1)


# --- 422: Miso's body and line format --------------------------------------------------------


async def test_one_bad_record_rejects_the_whole_request(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    records = [event(0), dict(event(1), product_ids="p-1"), event(2), dict(event(3), colour=1)]
    status, answer = await post_json(http, "/v1/interactions", upload_body(records))
    assert status == 422
    assert answer["errors"] is True
    assert answer["message"] == INTERACTIONS_422
    assert lines_index(answer["data"]) == [1, 3]
    assert answer["data"][0].startswith("data.1.product_ids")
    assert all(" is invalid. " in line for line in answer["data"])
    assert miso.records("interactions") == []
    assert (await miso.stats())["records_received"] == 0


@pytest.mark.parametrize("kind", ["products", "users"])
async def test_entity_schema_errors(
    kind: str, miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    make = ENTITY[kind]
    records = [make("ok"), {ID_FIELD[kind]: ["not", "a", "string"]}, dict(make("x"), bogus=1)]
    status, answer = await post_json(http, f"/v1/{kind}", upload_body(records))
    assert status == 422
    assert answer["message"] == ENTITIES_422
    assert lines_index(answer["data"]) == [1, 2]
    assert answer["data"][0].startswith(f"data.1.{ID_FIELD[kind]}")
    assert miso.records(kind) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"data": [1, 2', b'{"records": []}', b'{"data": {}}', b"[]", b""]
)
async def test_malformed_bodies_are_422(body: bytes, http: aiohttp.ClientSession) -> None:
    status, answer = await post_json(http, "/v1/interactions", body)
    assert status == 422
    assert answer["detail"][0]["loc"] == ["body"]


# --- keys ------------------------------------------------------------------------------------


async def test_keys(miso: RunningServer) -> None:
    body = upload_body([event(1)])
    cases: list[tuple[str, str, dict[str, str], int, Any]] = [
        ("POST", "/v1/interactions", {}, 401, {"message": "invalid api key."}),
        ("POST", "/v1/interactions", {"X-API-KEY": "wrong"}, 401, {"message": "invalid api key."}),
        ("GET", "/v1/products/_ids", {"X-API-KEY": "wrong"}, 401, {"message": "invalid api key."}),
        ("POST", f"/v1/interactions?api_key={SECRET}", {}, 200, None),
        (
            "POST",
            "/v1/interactions",
            {"X-API-KEY": PUBLISHABLE, "User-Agent": BROWSER_UA},
            200,
            None,
        ),
        ("POST", f"/v1/interactions?api_key={PUBLISHABLE}", {"User-Agent": BROWSER_UA}, 200, None),
        (
            "POST",
            "/v1/interactions",
            {"X-API-KEY": PUBLISHABLE, "User-Agent": "curl/8"},
            403,
            BOT_BLOCKING,
        ),
        (
            "POST",
            "/v1/products",
            {"X-API-KEY": PUBLISHABLE, "User-Agent": BROWSER_UA},
            403,
            BOT_BLOCKING,
        ),
        (
            "GET",
            "/v1/products/_ids",
            {"X-API-KEY": PUBLISHABLE, "User-Agent": BROWSER_UA},
            403,
            BOT_BLOCKING,
        ),
        (
            "DELETE",
            "/v1/interactions",
            {"X-API-KEY": PUBLISHABLE, "User-Agent": BROWSER_UA},
            403,
            BOT_BLOCKING,
        ),
    ]
    async with aiohttp.ClientSession(miso.url) as session:
        for method, path, headers, status, expected in cases:
            async with session.request(method, path, data=body, headers=headers) as r:
                assert (method, path, r.status) == (method, path, status)
                if expected is not None:
                    assert await r.json() == expected
    assert len(miso.records("interactions")) == 3
    assert (await miso.stats())["requests"]["by_status"] == {"200": 3, "401": 3, "403": 4}


async def test_admin_needs_no_key(miso: RunningServer) -> None:
    async with aiohttp.ClientSession(miso.url) as session, session.get("/_admin/stats") as r:
        assert r.status == 200


async def test_generated_keys_differ() -> None:
    server = await start_server(ServerConfig(port=0, store="memory"))
    try:
        assert len(server.secret_key) >= 24
        assert server.secret_key != server.publishable_key
        async with aiohttp.ClientSession(server.url) as session:
            headers = {"X-API-KEY": server.secret_key}
            async with session.get("/v1/users/_ids", headers=headers) as r:
                assert r.status == 200
    finally:
        await server.close()


async def test_unknown_paths_and_methods(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/search") as r:
        assert r.status == 404
        assert await r.json() == {"message": "not found"}
    async with http.get("/v1/interactions") as r:
        assert r.status == 405
        assert "POST" in r.headers["Allow"]


# --- faults ----------------------------------------------------------------------------------


async def test_random_errors_use_miso_500_body(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    miso.set_faults(Faults(error_rate=1.0, seed=1))
    seen = set()
    for _ in range(20):
        async with http.post("/v1/interactions", data=upload_body([event(1)])) as r:
            seen.add(r.status)
            assert await r.json() == SERVER_ERROR
    assert seen == {500, 502, 503}
    assert miso.records("interactions") == []
    async with http.get("/_admin/stats") as r:  # faults apply to /v1 only
        assert r.status == 200


async def test_throttle_sends_retry_after(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    miso.set_faults(Faults(throttle_rate=1.0, retry_after=0.5))
    async with http.post("/v1/interactions", data=upload_body([event(1)])) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "0.5"
    miso.set_faults(Faults(throttle_rate=1.0, retry_after=2))
    async with http.get("/v1/products/_ids") as r:
        assert (r.status, r.headers["Retry-After"]) == (429, "2")
    assert (await miso.stats())["requests"]["by_status"] == {"429": 2}


async def test_fail_first_then_succeed(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    miso.set_faults(Faults(fail_first=2, fail_status=429, retry_after=3))
    statuses = []
    for i in range(3):
        async with http.post("/v1/interactions", data=upload_body([event(i)])) as r:
            statuses.append((r.status, r.headers.get("Retry-After")))
    assert statuses == [(429, "3"), (429, "3"), (200, None)]
    assert miso.records("interactions") == [compact(event(2))]


async def test_max_body_bytes(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    small = upload_body([event(1)])
    large = upload_body([event(i) for i in range(50)])
    miso.set_faults(Faults(max_body_bytes=len(small)))
    assert (await post_json(http, "/v1/interactions", small))[0] == 200
    status, answer = await post_json(http, "/v1/interactions", large)
    assert status == 413
    assert "message" in answer

    async def chunked() -> Any:  # no Content-Length: the size is found while reading
        yield large[:100]
        yield large[100:]

    async with http.post("/v1/interactions", data=chunked()) as r:
        assert r.status == 413
    assert miso.records("interactions") == [compact(event(1))]


async def test_drop_closes_without_answer_and_stores_nothing(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    miso.set_faults(Faults(drop_rate=1.0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_json(http, "/v1/interactions", upload_body([event(1)]))
    miso.set_faults(Faults())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_json(
            http, "/v1/interactions", upload_body([event(2)]), headers={"X-Fault-Drop": "1"}
        )
    assert (await post_json(http, "/v1/interactions", upload_body([event(3)])))[0] == 200
    assert miso.records("interactions") == [compact(event(3))]
    assert (await miso.stats())["requests"]["by_status"] == {"200": 1, "dropped": 2}


async def test_lost_answer_stores_then_hangs_up(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    body = upload_body([event(1)])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_json(http, "/v1/interactions", body, headers={"X-Fault-Lost-Answer": "1"})
    assert (await post_json(http, "/v1/interactions", body))[0] == 200  # the client's retry
    stats = await miso.stats()
    assert (stats["interactions"]["total"], stats["interactions"]["duplicates"]) == (2, 1)


async def test_stall_past_client_timeout_stores_nothing(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    short = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(TimeoutError):
        await post_json(
            http,
            "/v1/interactions",
            upload_body([event(1)]),
            headers={"X-Fault-Stall": "30"},
            timeout=short,
        )

    async def abandoned() -> bool:
        return bool((await miso.stats())["requests"]["by_status"].get("abandoned") == 1)

    await eventually(abandoned)
    miso.set_faults(Faults(stall_rate=1.0, stall_seconds=0.01))
    assert (await post_json(http, "/v1/interactions", upload_body([event(2)])))[0] == 200
    assert miso.records("interactions") == [compact(event(2))]


async def test_fault_headers(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    body = upload_body([event(1)])
    async with http.post("/v1/interactions", data=body, headers={"X-Fault-Status": "503"}) as r:
        assert (r.status, await r.json()) == (503, SERVER_ERROR)
        assert "Retry-After" not in r.headers
    headers = {"X-Fault-Status": "503", "X-Fault-Retry-After": "3"}
    async with http.post("/v1/interactions", data=body, headers=headers) as r:
        assert (r.status, r.headers["Retry-After"]) == (503, "3")
    async with http.post("/v1/interactions", data=body, headers={"X-Fault-Status": "429"}) as r:
        assert (r.status, r.headers["Retry-After"]) == (429, "1")
    async with http.post("/v1/interactions", data=body, headers={"X-Fault-Latency": "0.01"}) as r:
        assert r.status == 200
    async with http.post("/v1/interactions", data=body, headers={"X-Fault-Status": "abc"}) as r:
        assert r.status == 400
        assert "X-Fault-Status" in (await r.json())["message"]
    async with http.post("/v1/interactions", data=body, headers={"X-Fault-Latency": "slow"}) as r:
        assert r.status == 400


async def test_reject_user_id_is_a_schema_error(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    miso.set_faults(Faults(reject_user_id="^bad-"))
    records = [
        event(0, user="ok"),
        event(1, user="bad-1"),
        event(2, user="fine-bad-"),
        event(3, user="bad-3"),
    ]
    status, answer = await post_json(http, "/v1/interactions", upload_body(records))
    assert status == 422
    assert answer == {
        "errors": True,
        "message": INTERACTIONS_422,
        "data": [
            f"data.{i}.user_id is invalid. The user_id is rejected by the server's "
            "reject_user_id rule."
            for i in (1, 3)
        ],
    }
    # merged with real schema errors, in index order, one line per bad record
    records[0]["product_ids"] = "p"
    records[1]["product_ids"] = "p"
    _, answer = await post_json(http, "/v1/interactions", upload_body(records))
    assert lines_index(answer["data"]) == [0, 1, 3]
    assert miso.records("interactions") == []


@pytest.mark.parametrize("kind", ["products", "users"])
async def test_task_reject_id(kind: str, miso: RunningServer, http: aiohttp.ClientSession) -> None:
    miso.set_faults(Faults(task_reject_id="^x"))
    make = ENTITY[kind]
    status, answer = await post_json(
        http, f"/v1/{kind}", upload_body([make("a"), make("x1"), make("b")])
    )
    assert status == 200
    async with http.get(f"/v1/{kind}/_status/{answer['data']['task_id']}") as r:
        task = await r.json()
    assert task["errors"] is True
    assert task["data"] == [
        f"data.1.{ID_FIELD[kind]} is invalid. The record is rejected by the server's "
        "task_reject_id rule."
    ]
    assert miso.records(kind) == [compact(make("a")), compact(make("b"))]  # type: ignore[arg-type]
    assert (await miso.stats())["records_received"] == 3


async def test_task_throttle_first_answers_polls_429_then_the_status(
    miso: RunningServer, http: aiohttp.ClientSession
) -> None:
    miso.set_faults(Faults(task_throttle_first=2, retry_after=0.5))
    status, answer = await post_json(http, "/v1/products", upload_body([product("a")]))
    assert status == 200  # an upload is not a poll: never throttled by this rule
    path = f"/v1/products/_status/{answer['data']['task_id']}"
    polls = []
    for _ in range(3):
        async with http.get(path) as r:
            polls.append((r.status, r.headers.get("Retry-After")))
    assert polls == [(429, "0.5"), (429, "0.5"), (200, None)]
    assert [(a.method, a.path) for a in miso.arrivals()] == [
        ("POST", "/v1/products"), ("GET", path), ("GET", path), ("GET", path)
    ]  # fmt: skip
    times = [a.at for a in miso.arrivals()]
    assert times == sorted(times)
    with pytest.raises(ValueError, match="task_throttle_first must not be negative"):
        Faults(task_throttle_first=-1)


async def test_admin_faults_endpoint(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.post("/_admin/faults", json={"fail_first": 1, "fail_status": 502}) as r:
        assert r.status == 200
        assert (await r.json())["fail_first"] == 1
    async with http.get("/_admin/faults") as r:
        assert (await r.json())["fail_status"] == 502
    async with http.get("/v1/products/_ids") as r:
        assert r.status == 502
    async with http.get("/v1/products/_ids") as r:
        assert r.status == 200
    for bad in (
        {"error_rate": 2},
        {"latency": "soon"},
        {"no_such_fault": 1},
        {"reject_user_id": "("},
    ):
        async with http.post("/_admin/faults", json=bad) as r:
            assert r.status == 400, bad
            assert "message" in await r.json()


async def test_seeded_faults_replay() -> None:
    faults = Faults(error_rate=0.3, throttle_rate=0.3, drop_rate=0.2, latency="exp:0.1", seed=42)
    injectors = [FaultInjector(faults) for _ in range(2)]
    runs = [[injector.plan({}) for _ in range(50)] for injector in injectors]
    assert runs[0] == runs[1]
    assert {p.status for p in runs[0]} == {None, 429, 500, 502, 503}


def test_latency_forms() -> None:
    assert Latency.parse("") == Latency()
    assert Latency.parse("0.25") == Latency("fixed", 0.25)
    assert Latency.parse("uniform:0.1:0.2") == Latency("uniform", 0.1, 0.2)
    assert Latency.parse("exp:0.1") == Latency("exp", 0.1)
    for bad in ("-1", "uniform:2:1", "exp", "normal:1:2", "nan", "fast"):
        with pytest.raises(ValueError, match="latency"):
            Latency.parse(bad)


def test_faults_refuse_nonsense() -> None:
    for values in ({"drop_rate": -0.1}, {"fail_status": 200}, {"task_reject_id": "["}):
        with pytest.raises(ValueError):
            Faults(**values)


# --- admin: records, reset ---------------------------------------------------------------------


async def test_admin_records_and_reset(miso: RunningServer, http: aiohttp.ClientSession) -> None:
    records = [event(i) for i in range(3)]
    await post_json(http, "/v1/interactions", upload_body(records))
    await post_json(http, "/v1/users", upload_body([user("u")]))
    async with http.get("/_admin/records?kind=interactions") as r:
        assert await r.read() == b"".join(compact(x) + b"\n" for x in records)
    async with http.get("/_admin/records?kind=users") as r:
        assert await r.read() == compact(user("u")) + b"\n"
    async with http.get("/_admin/records?kind=products") as r:
        assert await r.read() == b""
    async with http.get("/_admin/records?kind=carts") as r:
        assert r.status == 400
    async with http.post("/_admin/reset") as r:
        assert r.status == 200
    stats = await miso.stats()
    assert stats["interactions"]["total"] == stats["users"]["total"] == 0
    assert stats["requests"]["total"] == 0


# --- stores ----------------------------------------------------------------------------------


async def test_sqlite_store_persists_and_reports(tmp_path: Path) -> None:
    db = str(tmp_path / "rehearsal.db")
    server = await start_server(server_config(store="sqlite", db=db))
    async with aiohttp.ClientSession(server.url, headers=AUTH) as http:
        records = [event(i, user=f"u{i % 2}") for i in range(4)]
        await post_json(http, "/v1/interactions", upload_body(records))
        await post_json(http, "/v1/interactions", upload_body(records[:1]))
        await post_json(
            http, "/v1/products", upload_body([product("a", custom_attributes={"n": 1})])
        )
        async with http.delete("/v1/interactions", json={"user_ids": ["u1"]}) as r:
            assert r.status == 200
        assert server.records("interactions") == [compact(records[i]) for i in (0, 2, 0)]
        async with http.get("/_admin/records?kind=interactions") as r:
            assert await r.read() == b"".join(compact(records[i]) + b"\n" for i in (0, 2, 0))
        live = await server.stats()
    await server.close()

    stats = read_stats(db)
    assert stats == live
    assert stats["interactions"] == {
        "total": 3,
        "by_type": {"product_detail_page_view": 3},
        "duplicates": 1,
        "deleted": 2,
    }
    assert stats["requests"] == {"total": 4, "received": 4, "by_status": {"200": 4}}
    with sqlite3.connect(db) as conn:  # a plain file anyone can open
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        bodies = [row[0] for row in conn.execute("SELECT body FROM interactions ORDER BY rowid")]
        assert bodies == [compact(records[i]).decode() for i in (0, 2, 0)]

    # a restart keeps records, counters and the custom attribute types
    server = await start_server(server_config(store="sqlite", db=db))
    async with aiohttp.ClientSession(server.url, headers=AUTH) as http:
        _, answer = await post_json(
            http, "/v1/products", upload_body([product("b", custom_attributes={"n": "one"})])
        )
        async with http.get(f"/v1/products/_status/{answer['data']['task_id']}") as r:
            assert (await r.json())["errors"] is True
    stats = await server.stats()
    await server.close()
    assert stats["interactions"]["total"] == 3
    assert stats["requests"]["total"] == 6


async def test_sqlite_fixture_roundtrip(miso_sqlite: RunningServer) -> None:
    async with aiohttp.ClientSession(miso_sqlite.url, headers=AUTH) as http:
        await post_json(http, "/v1/users", upload_body([user("u1"), user("u2")]))
        async with http.get("/v1/users/u2") as r:
            assert (await r.json())["data"] == user("u2")
        async with http.get("/v1/users/_ids") as r:
            assert (await r.json())["data"]["ids"] == ["u1", "u2"]


async def test_null_store_counts_only() -> None:
    server = await start_server(server_config(store="null", validate=False))
    try:
        async with aiohttp.ClientSession(server.url, headers=AUTH) as http:
            records = [event(i) for i in range(3)] + [event(3, kind="like")]
            await post_json(http, "/v1/interactions", upload_body(records))
            await post_json(http, "/v1/interactions", upload_body(records))
            await post_json(http, "/v1/products", upload_body([product("a"), product("a")]))
            async with http.get("/v1/products/a") as r:
                assert r.status == 404
            async with http.get("/_admin/records") as r:
                assert r.status == 400
        stats = await server.stats()
        assert stats["interactions"] == {
            "total": 8,
            "by_type": {"like": 2, "product_detail_page_view": 6},
            "duplicates": 0,
            "deleted": 0,
        }
        assert stats["products"]["total"] == 2
        with pytest.raises(StoreError):
            server.records("interactions")
    finally:
        await server.close()


async def test_no_validate_stores_what_it_gets() -> None:
    server = await start_server(server_config(validate=False))
    try:
        async with aiohttp.ClientSession(server.url, headers=AUTH) as http:
            odd = {"type": "teleport", "user_id": "u", "colour": "red"}
            assert (await post_json(http, "/v1/interactions", upload_body([odd])))[0] == 200
            # a product without an id cannot be stored even unvalidated
            status, answer = await post_json(http, "/v1/products", upload_body([{"title": "t"}]))
            assert (status, lines_index(answer["data"])) == (422, [0])
        assert server.records("interactions") == [compact(odd)]
    finally:
        await server.close()


async def test_port_in_use_is_a_clear_error(miso: RunningServer) -> None:
    with pytest.raises(ServerError, match="cannot listen"):
        await start_server(server_config(port=miso.port))


async def test_bad_database_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="database"):
        await start_server(server_config(store="sqlite", db=str(tmp_path / "no" / "such.db")))
    with pytest.raises(StoreError, match="no database file"):
        read_stats(str(tmp_path / "missing.db"))


# --- load ------------------------------------------------------------------------------------


async def _concurrent_load(server: RunningServer, bodies: int, per_body: int) -> None:
    async with aiohttp.ClientSession(server.url, headers=AUTH) as http:

        async def send(b: int) -> int:
            records = [event(b * per_body + i) for i in range(per_body)]
            return (await post_json(http, "/v1/interactions", upload_body(records)))[0]

        assert await asyncio.gather(*(send(b) for b in range(bodies))) == [200] * bodies
    stats = await server.stats()
    assert stats["interactions"]["total"] == bodies * per_body
    assert stats["records_received"] == bodies * per_body


async def test_concurrent_bodies(miso_sqlite: RunningServer) -> None:
    await _concurrent_load(miso_sqlite, bodies=8, per_body=1000)
    assert (await miso_sqlite.stats())["interactions"]["duplicates"] == 0


@pytest.mark.chaos
async def test_concurrent_10k_bodies(miso_sqlite: RunningServer) -> None:
    await _concurrent_load(miso_sqlite, bodies=16, per_body=10_000)


# --- command line ------------------------------------------------------------------------------


def _parse(argv: list[str]) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_serve_flags_make_a_config() -> None:
    args = _parse(
        [
            "serve",
            "--port",
            "0",
            "--store",
            "memory",
            "--no-validate",
            "--fault-error-rate",
            "0.25",
            "--fault-latency",
            "uniform:0:0.1",
            "--fault-seed",
            "3",
            "--fault-fail-first",
            "2",
        ]
    )
    config = config_from_args(args, {"MISO_API_KEY": "from-env"})
    assert (config.port, config.store, config.validate) == (0, "memory", False)
    assert config.faults == Faults(error_rate=0.25, latency="uniform:0:0.1", seed=3, fail_first=2)
    assert config.secret_key == "from-env"
    assert "from-env" not in repr(config)
    flag = config_from_args(_parse(["serve", "--secret-key", "flag"]), {"MISO_API_KEY": "env"})
    assert flag.secret_key == "flag"
    with pytest.raises(UsageError, match="fault"):
        config_from_args(_parse(["serve", "--fault-error-rate", "lots"]), {})
    with pytest.raises(UsageError, match="port"):
        config_from_args(_parse(["serve", "--port", "70000"]), {})


def test_serve_stats_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from backfill.server.__main__ import main

    db = tmp_path / "x.db"
    assert main(["serve-stats", "--db", str(db)]) == 2
    assert "no database file" in capsys.readouterr().err
    assert not db.exists()


async def test_serve_subprocess_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`python -m backfill.server serve` as a user runs it: generated keys, SIGTERM, a real file."""
    db = tmp_path / "serve.db"
    env = {name: value for name, value in os.environ.items() if name != "MISO_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backfill.server",
        "serve",
        "--port",
        "0",
        "--db",
        str(db),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        banner = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in range(3)]
        url = banner[0].split("listening on ")[1].split()[0]
        key = banner[1].removeprefix("secret key (generated): ").strip()
        assert banner[2].startswith("publishable key (generated): ")
        records = [event(i) for i in range(10)]
        async with aiohttp.ClientSession(url, headers={"X-API-KEY": key}) as http:
            assert (await post_json(http, "/v1/interactions", upload_body(records)))[0] == 200
            assert (await post_json(http, "/v1/users", upload_body([user("u")])))[0] == 200
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rest = (await proc.stdout.read()).decode()
    assert code == 0, (await proc.stderr.read()).decode()
    assert rest.splitlines()[-1] == "backfill serve: stopped"
    assert key not in rest
    stats = read_stats(str(db))
    assert stats["interactions"]["total"] == 10
    assert stats["users"]["total"] == 1
    assert stats["requests"]["by_status"] == {"200": 2}
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
