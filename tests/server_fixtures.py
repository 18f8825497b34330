"""Fixtures and record factories for tests that drive the embedded server over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backfill.server import Faults, RunningServer, ServerConfig, start_server

SECRET = "sk-test-secret"
PUBLISHABLE = "pk-test-publishable"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
AUTH = {"X-API-KEY": SECRET}


def server_config(**overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "port": 0,
        "store": "memory",
        "secret_key": SECRET,
        "publishable_key": PUBLISHABLE,
    }
    values.update(overrides)
    return ServerConfig(**values)


def event(
    i: int, *, user: str | None = None, kind: str = "product_detail_page_view"
) -> dict[str, Any]:
    """A valid interaction, unique by `i`."""
    return {
        "type": kind,
        "user_id": user if user is not None else f"user-{i % 7}",
        "product_ids": [f"p-{i}"],
        "timestamp": f"2026-06-01T12:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
    }


def product(product_id: str, **fields: Any) -> dict[str, Any]:
    return {"product_id": product_id, "title": f"Product {product_id}", **fields}


def user(user_id: str, **fields: Any) -> dict[str, Any]:
    return {"user_id": user_id, "name": f"Name {user_id}", **fields}


def compact(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def upload_body(records: list[dict[str, Any]]) -> bytes:
    """A body whose records' bytes are known exactly: `compact(record)` each."""
    return b'{"data":[' + b",".join(compact(r) for r in records) + b"]}"


@pytest.fixture
async def miso() -> AsyncIterator[RunningServer]:
    """Memory store, known keys, no faults."""
    server = await start_server(server_config())
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def miso_sqlite(tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = await start_server(server_config(store="sqlite", db=str(tmp_path / "miso.db")))
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def http(miso: RunningServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A session on the memory server that sends the secret key."""
    async with aiohttp.ClientSession(miso.url, headers=AUTH) as session:
        yield session


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 5.0, step: float = 0.01
) -> None:
    """Waits for the server to catch up with something the client cannot observe directly."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(step)


def faults(**values: Any) -> Faults:
    return Faults(**values)
