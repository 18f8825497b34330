"""A real S3-compatible server for the tests (moto's, threaded, on 127.0.0.1), and a TCP proxy
in front of it that drops connections mid-response, to provoke network failures for real."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SECRET = "test-secret-Zq8vKx3pLm"  # a string that must appear in no output nor state file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def aws_env(endpoint: str, tmp: str) -> dict[str, str]:
    """Everything an S3 client needs, and nothing from this machine's own AWS setup; the
    instance-metadata endpoint is a closed loopback port, so no test reaches the network."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(tmp, "no-credentials"),
        "AWS_CONFIG_FILE": os.path.join(tmp, "no-config"),
        "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def boto(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )


@contextlib.contextmanager
def moto_subprocess(**env: str) -> Iterator[str]:
    """A moto server in its own process (for settings, such as authentication, that are
    read at import and so must not leak into the in-process one)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class CuttingProxy:
    """Forwards TCP to `upstream`; the first `cuts` connections that carry more than
    `after` bytes downstream are closed there, mid-response."""

    upstream: int
    after: int
    cuts: int
    port: int = 0
    cut: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def start(self) -> str:
        """Serves on a thread of its own, so that async and sync tests alike can use it."""
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0)
            )
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        up = asyncio.ensure_future(self._pipe(reader, up_writer, None))
        await self._pipe(up_reader, writer, self.after)
        up.cancel()
        up_writer.close()
        writer.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None
    ) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := await src.read(1 << 16):
                if limit is not None and self.cut < self.cuts and sent + len(data) > limit:
                    self.cut += 1
                    dst.write(data[: limit - sent])
                    await dst.drain()
                    dst.transport.abort()
                    return
                sent += len(data)
                dst.write(data)
                await dst.drain()
