"""Cleaning up a catalog: listing ids to delete, and reconciling the API with a local catalog."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec

from backfill.config import Secret
from backfill.errors import AuthRefused, ServerRefused
from backfill.ids import IdLines, id_check
from backfill.schema import Kind
from backfill.sources import read_blocks


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


class _IdsAnswer(msgspec.Struct):
    data: dict[str, list[str]]


async def remote_ids(endpoint: str, kind: Kind, secret: Secret, timeout: float) -> list[str]:
    url = f"{endpoint.rstrip('/')}/v1/{kind}/_ids"
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.get(url, headers={"X-API-KEY": secret.reveal()}) as resp,
    ):
        payload = await resp.read()
        if resp.status == 401:
            raise AuthRefused("the API key was refused (HTTP 401): check MISO_API_KEY")
        if resp.status != 200:
            raise ServerRefused(f"GET {url} answered HTTP {resp.status}")
    try:
        return msgspec.json.decode(payload, type=_IdsAnswer).data.get("ids", [])
    except msgspec.MsgspecError as exc:
        raise ServerRefused(f"GET {url}: unexpected answer ({exc})") from None


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
