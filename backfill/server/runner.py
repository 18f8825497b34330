"""Starting and stopping the server: in-process for tests, or blocking for `backfill serve`."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from typing import Any, Final, TextIO

import uvloop
from aiohttp import web

from backfill.errors import UsageError
from backfill.schema import Kind
from backfill.server.app import STATE, Arrival, Keys, ServerState, build_app
from backfill.server.config import Capacity, Faults, ServerConfig
from backfill.server.store import Counters, StoreError, make_store

SHUTDOWN_GRACE: Final = 5.0  # seconds in-flight requests get to finish on a stop
LISTEN_BACKLOG: Final = 1024
LOOPBACK: Final = ("127.0.0.1", "::1", "localhost")


class ServerError(UsageError):
    """The server cannot start as configured (port taken, unusable database path)."""


class RunningServer:
    """A started server; `close()` stops it and flushes the store."""

    def __init__(self, runner: web.AppRunner, state: ServerState, host: str, port: int) -> None:
        self._runner = runner
        self._state = state
        self.port = port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def secret_key(self) -> str:
        return self._state.keys.secret

    @property
    def publishable_key(self) -> str:
        return self._state.keys.publishable

    @property
    def config(self) -> ServerConfig:
        return self._state.config

    async def stats(self) -> dict[str, Any]:
        return await self._state.stats()

    def capacity_stats(self) -> dict[str, Any]:
        """The capacity model's counters, as under "capacity" in GET /_admin/stats."""
        return self._state.capacity.stats()

    def records(self, kind: Kind) -> list[bytes]:
        """Stored records in arrival order (memory and sqlite stores)."""
        return self._state.store.records(kind)

    def arrivals(self) -> list[Arrival]:
        """The latest /v1 requests, in arrival order, with the moment each arrived."""
        return list(self._state.arrivals)

    def set_faults(self, faults: Faults) -> None:
        """Replaces every fault at once (also restarts the fail_first budget and the seed)."""
        self._state.set_faults(faults)

    def set_capacity(self, capacity: Capacity) -> None:
        """Applies at once: a raised limit admits queued requests, a lowered one serves out."""
        self._state.capacity.update(capacity)

    async def reset(self) -> None:
        await self._state.reset()

    async def close(self) -> None:
        await self._runner.cleanup()
        await self._state.drain()
        await self._state.store.close(self._state.counters)

    async def __aenter__(self) -> RunningServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _keys(config: ServerConfig) -> Keys:
    return Keys(
        secret=config.secret_key or secrets.token_urlsafe(24),
        publishable=config.publishable_key or secrets.token_urlsafe(24),
    )


async def start_server(config: ServerConfig) -> RunningServer:
    """Opens the store and listens; raises ServerError when either is impossible."""
    store = make_store(config.store, config.db_path)
    try:
        counters = await store.open()
    except StoreError as exc:
        await store.close(Counters())
        raise ServerError(f"cannot open the database: {exc}") from exc
    state = ServerState(config, _keys(config), store, counters)
    app = build_app(state)
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_GRACE
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=LISTEN_BACKLOG)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await store.close(counters)
        raise ServerError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    port = runner.addresses[0][1]
    return RunningServer(runner, app[STATE], config.host, port)


def serve_forever(config: ServerConfig, out: TextIO = sys.stdout) -> int:
    """`backfill serve`: runs until SIGINT or SIGTERM, then stops cleanly (exit code 0)."""
    return uvloop.run(_serve(config, out))


async def _serve(config: ServerConfig, out: TextIO) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await start_server(config)
    try:
        _announce(server, config, out)
        await stop.wait()
        print("backfill serve: stopping", file=out, flush=True)
    finally:
        await server.close()
    print("backfill serve: stopped", file=out, flush=True)
    return 0


def _announce(server: RunningServer, config: ServerConfig, out: TextIO) -> None:
    """The only place a key is ever printed: the ones generated for this run."""
    where = f"sqlite file {config.db_path}" if config.store == "sqlite" else f"{config.store} store"
    print(f"backfill serve: listening on {server.url} ({where})", file=out)
    if config.secret_key is None:
        print(f"secret key (generated): {server.secret_key}", file=out)
    if config.publishable_key is None:
        print(f"publishable key (generated): {server.publishable_key}", file=out)
    if config.host not in LOOPBACK:
        print(
            f"warning: listening on {config.host}; /_admin/* needs no key, so anyone who can "
            "reach this port can read the stored records and change the faults",
            file=out,
        )
    out.flush()
