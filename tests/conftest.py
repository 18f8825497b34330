from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backfill.server import RunningServer, ServerConfig, start_server


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    """The embedded Miso server on a free loopback port, memory store, no faults."""
    srv = await start_server(ServerConfig(port=0, store="memory", secret_key="test-secret-key"))
    try:
        yield srv
    finally:
        await srv.close()
