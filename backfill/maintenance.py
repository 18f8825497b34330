"""Cleaning up a catalog: listing ids to delete, and reconciling the API with a local catalog."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Final

import msgspec

from backfill.client import Accepted, Fatal, Retryable, describe
from backfill.config import Secret, Settings
from backfill.delivery import open_client
from backfill.errors import RetriesExhausted, ServerRefused
from backfill.ids import IdLines, id_check
from backfill.schema import Kind
from backfill.sources import START, Block, Source, open_blocks
from backfill.targets import target_for

SNIFFED: Final = (
    1_000  # JSON objects of an ids file looked at to tell what kind of records it holds
)
# `diff` refuses to propose deleting more than this share of what the API holds: a cleanup
# after a bad load removes a minority of a catalog, while a wrong, partial or other
# environment's file proposes most of it. A false refusal costs one flag; a false pass, a catalog.
MAX_DELETE_SHARE: Final = 0.5
_WHAT_SAYS_SO: Final = {
    "products": "a `product_id`",
    "interactions": "a `type` (and no `product_id`)",
    "users": "a `user_id` and no `type`",
}


@dataclass(slots=True)
class LocalIds:
    """The ids of a local file, the reasons some lines are not ids, and the kinds seen."""

    path: str  # the source's name
    ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    shapes: Counter[str] = field(default_factory=Counter)  # sampled JSON objects by kind

    def other_kind(self, kind: Kind) -> str | None:
        """Why the file looks like records of another kind than `kind`, or None."""
        sampled = self.shapes.total()
        if not sampled:
            return None  # plain ids, one per line: nothing says what they are
        seen, count = self.shapes.most_common(1)[0]
        if seen == kind or seen == "other" or count * 2 <= sampled:
            return None
        return (
            f"{self.path} holds {seen}, not {kind}: {count:,} of the {sampled:,} records "
            f"looked at have {_WHAT_SAYS_SO[seen]}, as {seen} do"
        )


def record_kind(line: bytes) -> str | None:
    """What kind of record a JSON object line is, by the fields only that kind has."""
    try:
        record = msgspec.json.decode(line)
    except msgspec.MsgspecError:
        return None
    if not isinstance(record, dict):
        return None
    if "product_id" in record:
        return "products"
    if "type" in record:
        return "interactions"  # the one field every interaction has and users never do
    return "users" if "user_id" in record else "other"


class _Sniffing:
    """A BlockTransform that passes blocks through, noting the kind of the first SNIFFED
    JSON objects."""

    def __init__(self, shapes: Counter[str]) -> None:
        self.shapes = shapes

    async def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        shapes = self.shapes
        async for block in blocks:
            for line in block.lines:
                if shapes.total() >= SNIFFED:
                    break
                if line.lstrip().startswith(b"{"):
                    seen = record_kind(line)
                    if seen is not None:
                        shapes[seen] += 1
            yield block


async def read_ids(source: Source, kind: Kind, show_values: bool = True) -> LocalIds:
    """Valid ids in file order, reasons for the lines that are not ids (quoting the value
    unless `show_values` is off, see id_check), and what the file holds."""
    local = LocalIds(source.name)
    check, where = id_check(kind, show_values), source.name
    blocks = open_blocks(source, START, [_Sniffing(local.shapes), IdLines(kind)])
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            for i, raw in enumerate(block.lines):
                n = block.first + i
                if n in block.problems:
                    local.problems.append(f"{where} line {n + 1}: {block.problems[n].reason}")
                elif raw:
                    reason = check(raw)
                    if reason is None:
                        local.ids.append(msgspec.json.decode(raw, type=str))
                    else:
                        local.problems.append(f"{where} line {n + 1}: {reason}")
    return local


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
        raise RetriesExhausted(
            f"cannot list the {kind} ids of {endpoint}: {answer.reason}; "
            "check --endpoint and the network, then rerun"
        )
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


def accidental_deletes(result: Diff, kind: str, source: str) -> str | None:
    """Why the ids only the API holds look like an accident rather than a cleanup, or None."""
    doomed = len(result.only_remotely)
    if not doomed:
        return None
    if not result.local:
        return (
            f"{source} holds no {kind} ids, so all {result.remote:,} {kind} the API holds "
            "would be proposed for deletion"
        )
    share = doomed / result.remote
    if share <= MAX_DELETE_SHARE:
        return None
    return (
        f"{doomed:,} of the {result.remote:,} {kind} the API holds ({share:.0%}) would be "
        f"proposed for deletion, more than the {MAX_DELETE_SHARE:.0%} a cleanup normally "
        f"removes: is {source} the whole {kind} catalog of this environment?"
    )
