"""The state dir: one process at a time, and a path that cannot hold a checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.config import Settings
from backfill.errors import UsageError


async def test_one_process_per_state_dir(tmp_path: Path) -> None:
    from backfill.checkpoint import Checkpoint
    from backfill.errors import StateLocked
    from backfill.state import reset_state

    holder = await Checkpoint.open(tmp_path / "state")
    try:
        with pytest.raises(StateLocked, match=r"in use by another backfill process \(pid \d+\)"):
            await Checkpoint.open(tmp_path / "state")
        with pytest.raises(StateLocked):
            reset_state(Settings(state_dir=str(tmp_path / "state")))
    finally:
        await holder.close()
    reset_state(Settings(state_dir=str(tmp_path / "state")))  # free again
    assert not (tmp_path / "state" / "checkpoint.sqlite").exists()


async def test_an_unusable_state_dir_is_a_usage_error(tmp_path: Path) -> None:
    from backfill.checkpoint import Checkpoint

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match=r"cannot use state dir .*file/state"):
        await Checkpoint.open(blocker / "state")
