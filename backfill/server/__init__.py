"""The embedded Miso-compatible server (`backfill serve`): rehearse a load before production.

It speaks the Miso Data API (interactions, products, users), stores what it accepts (SQLite,
memory or nothing), and misbehaves on demand (latency, 5xx, 429, 413, dropped connections,
stalls, rejected records) so that the engine's recovery paths run for real.

    server = await start_server(ServerConfig(port=0, store="memory"))
    ...  # send to server.url with X-API-KEY: server.secret_key
    assert (await server.stats())["interactions"]["total"] == 10_000
    await server.close()

`/_admin/*` (stats, records, faults, reset) needs no key: it is a loopback tool, which is
why the server binds 127.0.0.1 by default.
"""

from backfill.server.config import Capacity, Faults, Latency, ServerConfig
from backfill.server.runner import RunningServer, ServerError, serve_forever, start_server
from backfill.server.store import StoreError, read_stats

__all__ = [
    "Capacity",
    "Faults",
    "Latency",
    "RunningServer",
    "ServerConfig",
    "ServerError",
    "StoreError",
    "read_stats",
    "serve_forever",
    "start_server",
]
