"""Logs that are not in Miso's shape (CSV, other JSON), mapped declaratively from the config.

STUB: the [mapping] table of the config file becomes a BlockTransform.
"""

from __future__ import annotations

from backfill.config import Settings
from backfill.sources import BlockTransform


def build_transform(settings: Settings) -> BlockTransform | None:
    """None when the input is already Miso JSON lines (no [mapping] table)."""
    if not settings.mapping:
        return None
    raise NotImplementedError("mapping is not implemented yet")
