"""Miso's official Python SDK (miso-sdk 1.3.0) as an independent client of the embedded server.

The SDK takes the base URL as `ApiClient(api_key, host=...)`, sends the key as the `api_key`
query parameter with a `miso-sdk-python` User-Agent and a JSON body even on GET and DELETE,
and unwraps `data` from successful answers. It is synchronous (requests), so each call runs in
a worker thread while the server keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from miso.sdk import ApiClient, ApiException

from backfill.server import RunningServer
from tests import server_fixtures
from tests.server_fixtures import event, product, user

miso = server_fixtures.miso

T = TypeVar("T")


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def sdk(server: RunningServer, key: str | None = None) -> ApiClient:
    return ApiClient(key or server.secret_key, host=server.url, raise_on_error=True)


async def test_sdk_products(miso: RunningServer) -> None:
    client = sdk(miso)
    records = [product("p1", tags=["a"]), product("p2", custom_attributes={"year": 1999})]
    uploaded = await call(client.product.upload, data=records)
    task = await call(client._api_call, f"v1/products/_status/{uploaded['task_id']}", {}, "GET")
    assert task == []  # the unwrapped "data": no error lines
    assert await call(client.product.read, product_id="p2") == records[1]
    ids = await call(client._api_call, "v1/products/_ids", {}, "GET")
    assert ids == {"ids": ["p1", "p2"]}
    deleted = await call(client.product.delete, product_id="p1")
    assert set(deleted) == {"task_id"}
    with pytest.raises(ApiException) as missing:
        await call(client.product.read, product_id="p1")
    assert (missing.value.status_code, missing.value.response) == (404, {"message": "not found"})
    assert [json.loads(raw) for raw in miso.records("products")] == [records[1]]


async def test_sdk_users(miso: RunningServer) -> None:
    client = sdk(miso)
    await call(client.user.upload, [user("u1", age=33), user("u2")])
    assert await call(client.user.read, "u1") == user("u1", age=33)
    assert await call(client._api_call, "v1/users/_ids", {}, "GET") == {"ids": ["u1", "u2"]}
    await call(client.user.delete, "u2")
    assert await call(client._api_call, "v1/users/_ids", {}, "GET") == {"ids": ["u1"]}


async def test_sdk_interactions(miso: RunningServer) -> None:
    client = sdk(miso)
    records = [event(i, user=f"u{i % 2}") for i in range(6)]
    assert await call(client.interaction.upload, data=records) == []  # the unwrapped "data"
    assert await call(client.interaction.delete, user_ids=["u0"]) == {"message": "success"}
    stored = [json.loads(raw) for raw in miso.records("interactions")]
    assert stored == [r for r in records if r["user_id"] == "u1"]
    stats = await miso.stats()
    assert stats["interactions"]["deleted"] == 3
    assert stats["requests"]["by_status"] == {"200": 2}


async def test_sdk_sees_miso_errors(miso: RunningServer) -> None:
    bad = dict(event(1), product_ids="p-1")
    with pytest.raises(ApiException) as schema:
        await call(sdk(miso).interaction.upload, data=[event(0), bad])
    assert schema.value.status_code == 422
    assert schema.value.response["errors"] is True
    assert [line.split(" ")[0] for line in schema.value.response["data"]] == ["data.1.product_ids"]
    with pytest.raises(ApiException) as refused:
        await call(sdk(miso, key="not-a-key").product.upload, data=[product("p")])
    assert (refused.value.status_code, refused.value.response) == (
        401,
        {"message": "invalid api key."},
    )
    # the publishable key from a non-browser client is bot-blocked
    with pytest.raises(ApiException) as blocked:
        await call(sdk(miso, key=miso.publishable_key).interaction.upload, data=[event(2)])
    assert blocked.value.status_code == 403
    assert miso.records("interactions") == []
