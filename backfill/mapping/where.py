"""Where a key of the config file is written: the line an error about the [mapping] names.

msgspec and tomllib forget positions, so the line is found again in the text: the first line,
in order, that opens a table naming each key of the path, or assigns it (bare, quoted or
dotted), or the n-th `[[array]]` header for an index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from backfill.errors import UsageError


class Where:
    """Finds the line of a key path in the config text (TOML tables, inline tables, arrays)."""

    def __init__(self, config_file: str | None) -> None:
        self.file = config_file
        self._lines: list[str] = []
        if config_file:
            try:
                with open(config_file, encoding="utf-8") as fh:
                    self._lines = fh.read().splitlines()
            except (OSError, UnicodeDecodeError):
                self._lines = []

    def error(self, path: Sequence[str | int], message: str) -> UsageError:
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else _key(p) for p in path)
        dotted = dotted.replace(".[", "[")
        where = self.file or "config"
        line = self.line(path)
        if line is not None:
            where += f" line {line}"
        return UsageError(f"{where}: {dotted}: {message}")

    def line(self, path: Sequence[str | int]) -> int | None:
        """1-based line of the deepest key of `path` found in order, or None."""
        found: int | None = None
        pos = 0
        for i, seg in enumerate(path):
            if isinstance(seg, int):
                prev = path[i - 1] if i else None
                hits = [n for n in range(pos, len(self._lines)) if _aot(self._lines[n], prev)]
                if seg < len(hits):
                    found = pos = hits[seg]
                continue
            pattern = _defines(seg)
            for n in range(pos, len(self._lines)):
                text = self._lines[n]
                if not text.lstrip().startswith("#") and pattern.search(text):
                    found = pos = n
                    break
            else:
                break
        return None if found is None else found + 1


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _defines(key: str) -> re.Pattern[str]:
    """A line that opens a table naming `key`, or assigns `key` (bare, quoted or dotted)."""
    k = re.escape(key)
    name = rf"""(?:{k}|"{k}"|'{k}')"""
    return re.compile(rf"""^\s*\[\[?[^\]]*(?<![\w-]){name}(?![\w-])|(?:^|[\s{{,.]){name}\s*[=.]""")


def _aot(line: str, key: str | int | None) -> bool:
    if not isinstance(key, str):
        return False
    return re.match(rf"""^\s*\[\[[^\]]*(?<![\w-]){re.escape(key)}\s*\]\]""", line) is not None
