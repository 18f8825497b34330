"""The naive baseline: what a user of Miso's official Python SDK writes in an afternoon.

Read each gzip file line by line, `json.loads` every line, upload 10,000 records at a time
with `ApiClient(...).interaction.upload(data=batch)`, one request after the other. The SDK
(miso-sdk, a dev dependency) is itself `requests` + `json`; without it the same calls are
made with `requests` directly, exactly as the SDK makes them.

    MISO_API_KEY=... python -m benchmarks.baselines.naive --endpoint URL [--limit N] FILE...
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

BATCH = 10_000

Upload = Callable[[list[dict[str, Any]]], object]


def sdk_upload(endpoint: str, key: str) -> tuple[Upload, str]:
    try:
        from miso.sdk import ApiClient  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return requests_upload(endpoint, key), "requests + json (miso-sdk not installed)"
    client = ApiClient(key, host=endpoint, raise_on_error=True)
    return (lambda batch: client.interaction.upload(data=batch)), f"miso-sdk {client.VERSION}"


def requests_upload(endpoint: str, key: str) -> Upload:
    import requests

    session = requests.Session()
    session.params = {"api_key": key}

    def upload(batch: list[dict[str, Any]]) -> object:
        resp = session.post(f"{endpoint}/v1/interactions", json={"data": batch})
        resp.raise_for_status()
        return resp.json()

    return upload


def batches(files: list[str], limit: int | None) -> Iterator[tuple[list[dict[str, Any]], int]]:
    """Batches of parsed records and the bytes of their lines."""
    batch: list[dict[str, Any]] = []
    size = seen = 0
    for name in files:
        with gzip.open(name, "rb") as fh:
            for line in fh:
                if limit is not None and seen >= limit:
                    break
                seen += 1
                size += len(line)
                batch.append(json.loads(line))
                if len(batch) == BATCH:
                    yield batch, size
                    batch, size = [], 0
    if batch:
        yield batch, size


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="naive SDK baseline")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--limit", type=int, help="stop after this many records")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    upload, client = sdk_upload(args.endpoint, os.environ["MISO_API_KEY"])
    records = total = 0
    for batch, size in batches(args.files, args.limit):
        upload(batch)
        records += len(batch)
        total += size
    print(json.dumps({"records": records, "bytes": total, "client": client}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
