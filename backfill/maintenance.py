"""Cleaning up a catalog: listing ids to delete, and reconciling the API with a local catalog."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from backfill.client import Accepted, Fatal, Retryable, describe
from backfill.config import Secret, Settings
from backfill.delivery import open_client
from backfill.errors import RetriesExhausted, ServerRefused
from backfill.schema import Kind
from backfill.sources import read_blocks
from backfill.targets import IdLines, id_check, target_for


async def read_ids(path: Path, kind: Kind) -> tuple[list[str], list[str]]:
    """(valid ids in file order, reasons for the lines that are not ids)."""
    ids, problems = [], []
    check, lines = id_check(kind), IdLines(kind)
    async for block in lines.blocks(path, read_blocks(path)):
        for i, raw in enumerate(block.lines):
            n = block.first + i
            if n in block.problems:
                problems.append(f"{path} line {n + 1}: {block.problems[n].reason}")
            elif raw:
                reason = check(raw)
                if reason is None:
                    ids.append(msgspec.json.decode(raw, type=str))
                else:
                    problems.append(f"{path} line {n + 1}: {reason}")
    return ids, problems


async def remote_ids(endpoint: str, kind: Kind, secret: Secret, timeout: float) -> list[str]:
    """Every id the API holds, through the client's one classification (a redirect, a 401,
    a page that is not Miso's answer all stop with their message)."""
    settings = Settings(endpoint=endpoint, kind=kind, request_timeout=timeout, concurrency=1)
    async with open_client(settings, secret, target_for(kind)) as client:
        answer = await client.fetch(f"/v1/{kind}/_ids")
    url = f"{client.url}/_ids"
    if isinstance(answer, Fatal):
        raise answer.error
    if isinstance(answer, Retryable):
        raise RetriesExhausted(f"GET {url}: {answer.reason}; rerun when the API answers")
    if not isinstance(answer, Accepted):
        raise ServerRefused(f"GET {url}: unexpected answer ({describe(answer)})")
    ids = answer.data.get("ids") if isinstance(answer.data, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ServerRefused(f"GET {url}: unexpected answer (no list of ids in `data.ids`)")
    return ids


@dataclass(frozen=True, slots=True)
class Diff:
    local: int
    remote: int
    missing_remotely: list[str]  # in the local catalog, not in the API
    only_remotely: list[str]  # in the API, not in the local catalog: candidates to delete

    def lines(self, kind: str, shown: int = 20) -> Iterator[str]:
        yield f"local catalog: {self.local:,} {kind}; the API holds {self.remote:,}"
        for title, ids in (
            ("missing from the API (load them)", self.missing_remotely),
            ("only in the API (delete them?)", self.only_remotely),
        ):
            yield f"{title}: {len(ids):,}"
            for value in ids[:shown]:
                yield f"  {value}"
            if len(ids) > shown:
                yield f"  ... and {len(ids) - shown:,} more"


def diff(local: list[str], remote: list[str]) -> Diff:
    local_set, remote_set = set(local), set(remote)
    return Diff(
        len(local_set),
        len(remote_set),
        sorted(local_set - remote_set),
        sorted(remote_set - local_set),
    )
