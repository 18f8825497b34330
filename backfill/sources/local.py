"""Sources on a local (or mounted) filesystem: files, directories and globs."""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles

from backfill.errors import UsageError
from backfill.sources.source import CHUNK, Fingerprint

DATA_SUFFIXES = (
    *(".jsonl", ".ndjson", ".json", ".csv", ".tsv"),
    *(".jsonl.gz", ".ndjson.gz", ".json.gz", ".csv.gz", ".tsv.gz", ".gz"),
)
FINGERPRINT_BLOCK = 64 * 1024


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A file on a local (or mounted) filesystem."""

    path: Path
    relative: str

    @classmethod
    def at(cls, path: Path | str) -> LocalFile:
        """One file named as it is, found under its own directory."""
        return cls(Path(path), Path(path).name)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def key(self) -> str:
        return str(self.path.resolve())

    def fingerprint(self) -> Fingerprint:
        return fingerprint(self.path)

    async def chunks(self, offset: int) -> AsyncIterator[bytes]:
        async with aiofiles.open(self.path, "rb") as fh:
            if offset:
                await fh.seek(offset)
            while chunk := await fh.read(CHUNK):
                yield chunk


def local_files(item: str) -> Iterator[LocalFile]:
    """The files one input names: a file, a directory (recursively, data files only) or a
    glob; UsageError when it names none."""
    if glob.has_magic(item):
        root = _fixed_prefix(item)
        files = [Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
        if not files:
            raise UsageError(f"no input file matches {item!r}")
        for path in files:
            yield LocalFile(path, os.path.relpath(path, root))
    elif os.path.isdir(item):
        for path in Path(item).rglob("*"):
            if path.is_file() and path.name.endswith(DATA_SUFFIXES):
                yield LocalFile(path, path.relative_to(item).as_posix())
    elif os.path.isfile(item):
        yield LocalFile.at(item)
    else:
        raise UsageError(f"input not found: {item}")


def _fixed_prefix(pattern: str) -> str:
    """The directory part of a glob before its first wildcard ("logs" of "logs/2026-*/x")."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), parts[:-1]))
    return os.path.join(*fixed) if fixed else "."


def fingerprint(path: Path) -> Fingerprint:
    st = path.stat()
    return Fingerprint(st.st_size, st.st_mtime_ns, *prefix_hashes(path, st.st_size))


def prefix_hashes(path: Path, size: int) -> tuple[str, str]:
    """The head and tail hashes of the file's first `size` bytes: equal to those of its
    fingerprint when it was `size` bytes long, if it has only grown since (--follow)."""
    with open(path, "rb") as fh:
        # at least one byte is read, then cut: an unreadable file (EIO) still says so
        head = hashlib.sha256(fh.read(min(size, FINGERPRINT_BLOCK) or 1)[:size]).hexdigest()[:32]
        fh.seek(max(0, size - FINGERPRINT_BLOCK))
        tail = hashlib.sha256(fh.read(min(size, FINGERPRINT_BLOCK))).hexdigest()[:32]
    return head, tail
