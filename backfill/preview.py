"""`backfill preview`: the first records of a file before and after the mapping, side by side.

Getting a mapping right by loading and reading 422s takes an hour; this takes a minute. It
runs the very code a load runs (reader, mapping, validation) on the first N records of one
input and prints, for each, its source, the Miso record it becomes and the verdict: valid,
refused (with the reason a dead letter would carry), or left out on purpose (and by which
rule). Nothing is sent.

    backfill preview --config configs/mapping-ecommerce-csv.toml events.csv -n 3

Exit code 0 when every record shown is valid, 1 when one is not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from backfill.config import Settings, load_settings
from backfill.errors import UsageError
from backfill.mapping import MappingTransform, Observations, build_transform
from backfill.privacy import build_privacy
from backfill.schema import OUT_OF_WINDOW, RecordValidator
from backfill.sources import START, Block, BlockTransform, LocalFile, Problem, Source, open_blocks

EXIT_ALL_VALID: Final = 0
EXIT_SOME_INVALID: Final = 1
GUTTER: Final = " │ "
SIDE_BY_SIDE_MIN: Final = 90  # narrower terminals get one column after the other


@dataclass(slots=True)
class Shown:
    """One record of the preview."""

    line: int  # 1-based, as editors count (and dead letters say)
    source: Any  # the parsed source (CSV: column -> value), or the raw text
    mapped: bytes | None  # the Miso record, None when refused or left out
    verdict: str  # "valid", "dead letter" or "left out"
    why: str  # the reason of a dead letter, the rule that left a record out
    valid: bool
    privacy: list[str] = field(default_factory=list)  # what the [privacy] step changed


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `preview` to the main parser's subcommands; `args.func(args)` runs it."""
    p = sub.add_parser(
        "preview",
        help="show the first records of a file before and after the [mapping], with verdicts",
        description="Print the first records of INPUT as read, as mapped to Miso records "
        "by the [mapping] table of --config, and whether each is valid. Sends nothing.",
    )
    p.add_argument("input", help="one input file (CSV, TSV or JSON lines; gzip or not)")
    p.add_argument(
        "--config", required=True, help="TOML file with the [mapping] and/or [privacy] table"
    )
    p.add_argument("-n", "--records", type=int, default=5, help="records to show (default 5)")
    p.add_argument("--width", type=int, help="output width (default: the terminal's)")
    p.set_defaults(func=cmd_preview)


def cmd_preview(args: argparse.Namespace) -> int:
    if args.records <= 0:
        raise UsageError("-n/--records must be positive")
    settings = load_settings(args.config, {"inputs": [args.input]})
    path = Path(args.input)
    if not path.is_file():
        raise UsageError(f"input not found: {path}")
    shown = asyncio.run(preview(settings, LocalFile.at(path), args.records))
    width = args.width or shutil.get_terminal_size((120, 24)).columns
    print(render(shown, settings, path, width))
    return EXIT_ALL_VALID if all(s.valid for s in shown) else EXIT_SOME_INVALID


async def preview(settings: Settings, source: Source, limit: int) -> list[Shown]:
    """The first `limit` records of `source` (not blank lines, not the CSV header)."""
    transform = build_transform(settings)
    privacy = build_privacy(settings.privacy, settings.kind, settings.operation)
    validator = RecordValidator(settings.kind, settings.rules)
    seen = Observations()
    raw: dict[int, bytes] = {}
    shown: list[Shown] = []
    transforms: list[BlockTransform] = [_Remember(raw)]
    if transform is not None:
        assert isinstance(transform, MappingTransform)
        transforms.append(_Observed(transform, seen))
    before: dict[int, bytes] = {}  # each line as the privacy step received it
    if privacy is not None:
        transforms += [_Remember(before), privacy]
    blocks = open_blocks(source, START, transforms, max_line_bytes=settings.max_line_bytes)
    async with contextlib.aclosing(blocks):
        async for block in blocks:
            for slot, line in enumerate(block.lines):
                index = block.first + slot
                problem = block.problems.get(index)
                if (not line or line.isspace()) and problem is None:
                    continue  # a blank line, as a run skips it
                source_text = seen.sources.get(index, raw.get(index, b""))
                item = _verdict(index, source_text, line, problem, validator)
                if index in before and before[index] != line and problem is None:
                    item.privacy = privacy_changes(before[index], line)
                shown.append(item)
                if len(shown) >= limit:
                    return shown
    return shown


class _Remember:
    """Keeps each raw line, to show a source that could not be parsed."""

    def __init__(self, raw: dict[int, bytes]) -> None:
        self.raw = raw

    async def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        raw = self.raw
        async for block in blocks:
            for slot, line in enumerate(block.lines):
                raw[block.first + slot] = line
            for index, problem in block.problems.items():
                raw[index] = problem.raw
            yield block


class _Observed:
    """The mapping, telling `seen` what each record was parsed from."""

    def __init__(self, transform: MappingTransform, seen: Observations) -> None:
        self.transform, self.seen = transform, seen

    def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        return self.transform.blocks(source, blocks, self.seen)


def _verdict(
    index: int,
    source: Any,
    line: bytes,
    problem: Problem | None,
    validator: RecordValidator,
) -> Shown:
    line_no = index + 1
    if problem is not None and problem.filtered:
        return Shown(line_no, source, None, "left out", problem.reason or "a drop rule", True)
    if problem is not None:
        return Shown(line_no, source, None, "dead letter", problem.reason, False)
    reason = validator.check(line)
    if reason is None:
        return Shown(line_no, source, line, "valid", "", True)
    if reason is OUT_OF_WINDOW:
        return Shown(line_no, source, line, "left out", reason, True)
    return Shown(line_no, source, line, "dead letter", reason, False)


def privacy_changes(before: bytes, after: bytes) -> list[str]:
    """`path: before -> after` for each value the [privacy] step rewrote."""
    try:
        old, new = _flat(msgspec.json.decode(before)), _flat(msgspec.json.decode(after))
    except msgspec.DecodeError:
        return ["(the line is not JSON: rewritten as text)"]
    return [
        f"{path}: {_short(old.get(path))} -> {_short(value)}"
        for path, value in new.items()
        if old.get(path) != value
    ]


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        prefix = f"{path}." if path else ""
        return {k: v for key, item in value.items() for k, v in _flat(item, prefix + key).items()}
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}[{i}]").items()
        }
    return {path: value}


def _short(value: Any, limit: int = 40) -> str:
    if isinstance(value, str) and len(value) > limit:
        value = value[: limit - 1] + "…"  # a hash is recognisable by its first digits
    return msgspec.json.encode(value).decode()


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------


def render(shown: list[Shown], settings: Settings, path: Path, width: int) -> str:
    mapping = settings.mapping or {}
    what = f"{mapping.get('format', 'Miso JSON lines')}"
    steps = " and the [privacy] step" if settings.privacy and settings.privacy.active else ""
    out = [f"{path} ({what}) -> Miso {settings.kind}{steps}, first {len(shown)} records", ""]
    columns = width >= SIDE_BY_SIDE_MIN
    half = (width - len(GUTTER)) // 2 if columns else width
    for s in shown:
        out.append(_rule(f" line {s.line}: {s.verdict} ", width))
        if s.why:
            out.extend(_wrap([s.why], width))
        if s.privacy:
            out.extend(_wrap(["privacy:", *(f"  {change}" for change in s.privacy)], width))
        left = ["source", *_source_lines(s.source)]
        right = ["mapped", *(_json_lines(s.mapped) if s.mapped is not None else ["(none)"])]
        if columns:
            out.extend(_side_by_side(left, right, half))
        else:
            out.extend(_wrap(left, width) + _wrap(right, width))
        out.append("")
    counts = {v: sum(s.verdict == v for s in shown) for v in ("valid", "dead letter", "left out")}
    out.append(f"{len(shown)} records: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    return "\n".join(out)


def _rule(title: str, width: int) -> str:
    return "──" + title + "─" * max(0, width - len(title) - 2)


def _source_lines(source: Any) -> list[str]:
    if isinstance(source, dict) and source and all(isinstance(v, str) for v in source.values()):
        return [f"{k}: {v}" for k, v in source.items()]  # a CSV row
    if isinstance(source, bytes):
        return [source.decode("utf-8", "backslashreplace")]
    return _json_lines(msgspec.json.encode(source))


def _json_lines(data: bytes) -> list[str]:
    return msgspec.json.format(data, indent=2).decode().splitlines()


def _wrap(lines: list[str], width: int) -> list[str]:
    wrapped: list[str] = []
    deepest = max(0, width // 2 - 2)  # textwrap never ends when the indent fills the width
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if indent > deepest:
            line, indent = " " * deepest + line.lstrip(" "), deepest
        wrapped.extend(
            textwrap.wrap(
                line,
                width,
                subsequent_indent=" " * (indent + 2),
                drop_whitespace=False,
                break_on_hyphens=False,
            )
            or [""]
        )
    return wrapped


def _side_by_side(left: list[str], right: list[str], half: int) -> list[str]:
    a, b = _wrap(left, half), _wrap(right, half)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return [f"{x.ljust(half)}{GUTTER}{y}".rstrip() for x, y in zip(a, b, strict=True)]
