"""Catalog loads (products, users): one record per id, with attribute types that stay put.

The API replaces a product or user whole by id, so sending every version of a record is
wasted work at best and, out of order, a regression at worst. Before the send pass, a
pre-scan reads the inputs (ids, `updated_at`, attribute types only) and decides:
  * which occurrence of each id is sent: the newest by `updated_at`, else the last one;
    the others are *superseded* (counted, not sent);
  * which of the sent records change the type of a `custom_attributes` key first seen with
    another type (the contract says a key's type must stay consistent): dead-lettered.
The decision depends only on the inputs, so every leg of a resumed load makes the same one.
Memory: one dict entry per distinct id (catalogs are millions of records, not billions).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from backfill.schema import attribute_type
from backfill.sources import START, Block, BlockTransform, Source, open_blocks

Position = tuple[int, int]  # (file index, line index)
OLDEST = datetime.min.replace(tzinfo=UTC)
SUPERSEDED = "superseded by a newer record with the same id"


class _Head(msgspec.Struct):
    product_id: Any = None
    user_id: Any = None
    updated_at: Any = None
    custom_attributes: Any = None


@dataclass(slots=True)
class CatalogPlan:
    superseded: dict[int, set[int]] = field(default_factory=dict)  # file index -> lines
    conflicts: dict[int, dict[int, str]] = field(default_factory=dict)

    @property
    def superseded_count(self) -> int:
        return sum(map(len, self.superseded.values()))


def _when(value: Any) -> datetime:
    if not isinstance(value, str):
        return OLDEST
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return OLDEST
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _heads(
    sources: list[Source], max_line_bytes: int, transforms: Sequence[BlockTransform]
) -> AsyncIterator[tuple[Position, _Head]]:
    decode = msgspec.json.Decoder(_Head).decode
    for index, source in enumerate(sources):
        blocks = open_blocks(source, START, transforms, max_line_bytes=max_line_bytes)
        async with contextlib.aclosing(blocks):
            async for block in blocks:
                for i, line in enumerate(block.lines):
                    if len(line) < 2:
                        continue
                    try:
                        yield (index, block.first + i), decode(line)
                    except (msgspec.MsgspecError, UnicodeDecodeError):
                        continue  # the send pass dead-letters it with the full reason


async def prescan(
    sources: list[Source],
    id_field: str,
    max_line_bytes: int,
    transforms: Sequence[BlockTransform] = (),
) -> CatalogPlan:
    """Reads the sources through `transforms` (those before the marks) and decides."""
    plan = CatalogPlan()
    winners: dict[str, tuple[datetime, Position]] = {}
    async for pos, head in _heads(sources, max_line_bytes, transforms):
        key = getattr(head, id_field)
        if not isinstance(key, str):
            continue
        rank = (_when(head.updated_at), pos)
        best = winners.get(key)
        if best is None or rank >= best:
            if best is not None:
                plan.superseded.setdefault(best[1][0], set()).add(best[1][1])
            winners[key] = rank
        else:
            plan.superseded.setdefault(pos[0], set()).add(pos[1])
    types: dict[str, tuple[str, Position]] = {}
    async for pos, head in _heads(sources, max_line_bytes, transforms):
        if pos[1] in plan.superseded.get(pos[0], ()) or not isinstance(
            head.custom_attributes, dict
        ):
            continue
        for name, value in head.custom_attributes.items():
            kind = attribute_type(value)
            if kind is None:
                continue
            seen = types.setdefault(name, (kind, pos))
            if seen[0] != kind:
                where = f"{sources[seen[1][0]].name} line {seen[1][1] + 1}"
                plan.conflicts.setdefault(pos[0], {})[pos[1]] = (
                    f"custom_attributes.{name}: expected {seen[0]} (the type it has in {where}),"
                    f" got {kind}; a key's type must stay the same across records"
                )
                break
    return plan


class CatalogMarks:
    """Applies a CatalogPlan to one file's blocks: superseded lines are filtered, conflicting
    ones become dead letters with the reason."""

    def __init__(self, plan: CatalogPlan, index_of: Callable[[Source], int]) -> None:
        self._plan = plan
        self._index_of = index_of

    async def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        index = self._index_of(source)
        superseded = self._plan.superseded.get(index, set())
        conflicts = self._plan.conflicts.get(index, {})
        async for block in blocks:
            if superseded or conflicts:
                for i, line in enumerate(block.lines):
                    n = block.first + i
                    if n in superseded:
                        block.filter(i, SUPERSEDED)
                    elif n in conflicts:
                        block.reject(i, conflicts[n], line)
            yield block
