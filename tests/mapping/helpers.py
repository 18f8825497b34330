"""Mapping tests' helpers: a transform from a [mapping] table, and its outcome per line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from backfill.config import load_settings
from backfill.mapping import MappingTransform, build_transform, map_file_blocks
from backfill.schema import RecordValidator, Rules
from backfill.server import RunningServer
from backfill.sources import LocalFile, Problem
from tests.helpers import run_engine

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HEAD = 'type = { const = "product_detail_page_view" }\nuser_id = "user"\n'
CHECK = RecordValidator("interactions", Rules(require_timestamp=False)).check


def make(tmp_path: Path, table: str, kind: str = "interactions") -> MappingTransform:
    config = tmp_path / "mapping.toml"
    config.write_text(table)
    transform = build_transform(load_settings(str(config), {"kind": kind}))
    assert isinstance(transform, MappingTransform)
    return transform


def csv_table(fields: str, extra: str = "", head: str = HEAD) -> str:
    return f'[mapping]\nformat = "csv"\n{extra}\n[mapping.fields]\n{head}{fields}\n'


def json_table(fields: str, extra: str = "", head: str = HEAD) -> str:
    return f'[mapping]\nformat = "jsonl"\n{extra}\n[mapping.fields]\n{head}{fields}\n'


Outcome = dict[str, Any] | Problem


async def run(transform: MappingTransform, path: Path) -> dict[int, Outcome]:
    """Line index -> the mapped record (decoded) or the Problem, for every non-blank slot."""
    got: dict[int, Outcome] = {}
    async for block in map_file_blocks(transform, LocalFile.at(path)):
        for slot, line in enumerate(block.lines):
            if line:
                got[block.first + slot] = json.loads(line)
        got.update(block.problems)
    return dict(sorted(got.items()))


async def rows(tmp_path: Path, table: str, text: str | bytes, name: str = "in.csv") -> Any:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return await run(make(tmp_path, table), path)


def reason(outcome: Outcome) -> str:
    assert isinstance(outcome, Problem) and not outcome.filtered, outcome
    return outcome.reason


TEXT_TABLE = csv_table('"context.custom_context.note" = "note"\n"context.custom_context.n" = "n"')


def notes(got: dict[int, Outcome]) -> dict[int, Any]:
    return {
        i: (o.get("context", {}).get("custom_context", {}) if isinstance(o, dict) else o)
        for i, o in got.items()
    }


def multiline_csv(records: int, pad: int = 0) -> tuple[bytes, list[dict[str, str]]]:
    """Rows whose notes hold 0 to 3 line breaks, commas and quotes (and `pad` more bytes)."""
    lines, expected = ["user,note,n"], []
    for i in range(records):
        note = f"row {i}" + "\nmore" * (i % 4) + (', "q"' if i % 5 == 0 else "") + "z" * pad
        cell = '"' + note.replace('"', '""') + '"' if i % 2 == 0 or "\n" in note else note
        lines.append(f"u{i % 7},{cell},{i}")
        expected.append({"note": note, "n": str(i)})
    return ("\n".join(lines) + "\n").encode(), expected


def config_settings(name: str) -> dict[str, Any]:
    path = CONFIGS / name
    with open(path, "rb") as fh:
        table = tomllib.load(fh)
    return {"mapping": table["mapping"], "config_file": str(path)}


async def load_sample(
    tmp_path: Path, server: RunningServer, sample: str, config: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Loads a shipped sample with its shipped config: (report, records the server stored)."""
    path = CONFIGS / "samples" / sample
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], **config_settings(config)
    )
    return report, [json.loads(r) for r in server.records("interactions")]
