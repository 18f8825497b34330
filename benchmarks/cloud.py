"""Cloud inputs (issue 16): the same gzip day files read from local disk and from a local
S3-compatible server (moto's, in a subprocess on 127.0.0.1), through each one's Source.

Each file is read with `chunks(0)` and inflated as it streams, as the reader does; the CPU
column is this process's alone (the server's is not counted). A loopback S3 server is no
bucket across a network: the S3 row says what the client side costs, not what S3 delivers.
Skipped when the cloud extra (obstore) or moto[server] is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

from backfill.sources import LocalFile, Source, find_sources
from benchmarks.data import Dataset
from benchmarks.harness import PYTHON, BenchError, say
from benchmarks.report import Check, Section, table

START_TIMEOUT = 30.0


def section(data: Dataset) -> Section:
    try:
        import moto.server  # noqa: F401
        import obstore  # noqa: F401
        import requests
    except ImportError as exc:
        text = f"skipped: {exc.name} is not installed (`make venv` installs .[dev,bench,cloud])"
        return Section("cloud", "Cloud inputs (issue 16)", text, {"skipped": text})
    files = data.files
    local = [LocalFile(p, p.name) for p in files]
    with _moto() as endpoint:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        requests.put(f"{endpoint}/{bucket}", timeout=30).raise_for_status()
        for path in files:
            with open(path, "rb") as fh:
                url = f"{endpoint}/{bucket}/logs/{path.name}"
                requests.put(url, data=fh, timeout=300).raise_for_status()
        saved = _aws_env(endpoint)
        try:
            remote = find_sources([f"s3://{bucket}/logs/*.jsonl.gz"])
            rows = {"local disk": _read_all(local), "S3 (moto, obstore)": _read_all(remote)}
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return _report(data, len(files), rows)


def _report(data: Dataset, count: int, rows: dict[str, dict[str, float]]) -> Section:
    local, s3 = rows["local disk"], rows["S3 (moto, obstore)"]
    if local["raw_bytes"] != s3["raw_bytes"]:
        raise BenchError("the S3 copy inflated to other bytes than the local files")
    markdown = "\n".join(
        [
            f"{count} gzip day files, {data.disk_bytes / 2**20:.1f} MiB stored, "
            f"{data.raw_bytes / 2**20:.1f} MiB of JSON lines, read with `Source.chunks(0)` "
            "and inflated as they stream. CPU is the reading process's only.",
            "",
            table(
                ["store", "seconds", "stored MiB/s", "inflated MiB/s", "CPU s"],
                [
                    (name, r["seconds"], r["stored_mib_s"], r["inflated_mib_s"], r["cpu_s"])
                    for name, r in rows.items()
                ],
            ),
        ]
    )
    ratio = s3["seconds"] / local["seconds"] if local["seconds"] else 0.0
    per_object = (s3["seconds"] - local["seconds"]) / count * 1000
    markdown += (
        f"\n\nFrom the S3 server: {ratio:.1f}x the local time, {per_object:.1f} ms more per "
        "object (moto answers each request in Python; a real store's cost is its latency)."
    )
    check = Check("objects read back as the local files (inflated bytes)", "identical", True)
    return Section("cloud", "Cloud inputs (issue 16)", markdown, {"rows": rows}, [check])


def _read_all(sources: list[Source] | list[LocalFile]) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    stored, raw = asyncio.run(_drain(list(sources)))
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "stored_mib_s": round(stored / seconds / 2**20, 1),
        "inflated_mib_s": round(raw / seconds / 2**20, 1),
        "cpu_s": round(time.process_time() - cpu, 3),
        "raw_bytes": raw,
    }


async def _drain(sources: list[Any]) -> tuple[int, int]:
    stored = raw = 0
    for source in sources:
        d = zlib.decompressobj(wbits=31)
        async for piece in source.chunks(0):
            stored += len(piece)
            while piece:
                raw += len(d.decompress(piece))
                piece = b""
                if d.eof:
                    piece, d = d.unused_data, zlib.decompressobj(wbits=31)
    return stored, raw


def _aws_env(endpoint: str) -> dict[str, str]:
    """Points the S3 client at the local server; returns the environment to restore."""
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    return saved


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise BenchError("the moto S3 server did not start") from None
                time.sleep(0.1)
        say(f"   moto S3 server on 127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
