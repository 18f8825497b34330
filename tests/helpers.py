"""Test helpers: valid records with known identities, log files, and running the engine."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backfill.config import Secret, Settings
from backfill.engine import Engine

TYPES = ["product_detail_page_view", "add_to_cart", "checkout", "search", "home_page_view"]


def interaction(i: int, *, user: str | None = None) -> dict[str, Any]:
    """A valid, unique interaction; `i` is recoverable from context.custom_context.n."""
    kind = TYPES[i % len(TYPES)]
    rec: dict[str, Any] = {
        "type": kind,
        "user_id": user if user is not None else f"user-{i % 97}",
        "timestamp": f"2026-06-{1 + i // 86400 % 28:02d}T{i // 3600 % 24:02d}:"
        f"{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
        "context": {"custom_context": {"n": i}},
    }
    if kind == "search":
        rec["search"] = {"keywords": f"shoes {i}"}
    elif kind != "home_page_view":
        rec["product_ids"] = [f"p-{i % 1000}"]
    if kind == "checkout":
        rec["revenue"] = 10.5
    if kind == "add_to_cart":
        rec["quantities"] = [1]
    return rec


def line(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, separators=(",", ":")).encode()


def write_lines(
    path: Path, lines: Iterable[bytes], *, gz: bool = False, newline: bytes = b"\n"
) -> Path:
    data = b"".join(x + newline for x in lines)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def numbers(records: Iterable[bytes]) -> list[int]:
    """The `n` of each stored record, in arrival order."""
    return [json.loads(r)["context"]["custom_context"]["n"] for r in records]


async def run_engine(
    tmp_path: Path, endpoint: str, key: str, inputs: list[str], **overrides: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "inputs": inputs,
        "endpoint": endpoint,
        "state_dir": str(tmp_path / "state"),
        "progress": "off",
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    values.update(overrides)
    settings = Settings(**values)
    settings.check()
    return await Engine(settings, Secret(key)).run()


def dead_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
