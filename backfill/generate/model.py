"""What `backfill generate` is asked for and what it reports.

The report is the manifest (`DIR/manifest.json`): it names every file, how many lines it holds,
how many of them are valid, and exactly which lines carry which defect, so tests can check the
engine's dead-letter file line by line. It holds nothing run-dependent (no timings), so the same
seed gives the same manifest bytes.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Final, Literal

import msgspec

from backfill.errors import UsageError

Format = Literal["jsonl", "jsonl.gz"]
FileKind = Literal["interactions", "products", "users"]

DEFAULT_START: Final = date(2026, 6, 1)
MANIFEST_NAME: Final = "manifest.json"

# Defects of one line: the line is replaced by a broken version of a valid record.
LINE_DEFECTS: Final = (
    "malformed_json",
    "invalid_utf8",
    "wrong_type",
    "bad_timestamp",
    "missing_timestamp",
    "naive_timestamp",
    "unknown_type",
    "unknown_field",
    "missing_identity",
    "oversized_string",
)
# Defects of a whole file: each appears once in a run with --bad-fraction > 0.
FILE_DEFECTS: Final = ("truncated_line", "empty_file", "truncated_gzip")
DEFECT_KINDS: Final = LINE_DEFECTS + FILE_DEFECTS
# Valid against Miso's own schema, invalid only under the backfill rules (`schema.Rules`):
# a relaxed run (--no-require-timestamp, --no-require-identity) would send them. A naive
# timestamp is not among them: the contract's `date-time` is RFC 3339, which needs an offset.
RULE_ONLY_KINDS: Final = frozenset({"missing_timestamp", "missing_identity"})

# An average day may hold at most this many records: timestamps within a day are distinct
# milliseconds (what makes every valid line unique), and the busiest minute of a busy day holds
# ~7x the average minute; this keeps it under half of its 60,000 milliseconds.
MAX_RECORDS_PER_DAY: Final = 5_000_000


class GenerateConfigError(UsageError):
    """A `backfill generate` setting that cannot work; the message names the flag."""


class GenerateConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one generation run depends on; the same config gives the same bytes."""

    out: str
    days: int = 90
    records: int = 100_000
    seed: int = 0
    format: Format = "jsonl.gz"
    bad_fraction: float = 0.0
    start: date = DEFAULT_START
    products: int | None = None  # None: scaled from `records`
    users: int | None = None  # None: scaled from `records`
    catalog: bool = True  # also write products and users files
    pii_rate: float = 0.0  # share of valid lines given an e-mail, phone or card number

    def __post_init__(self) -> None:
        if self.days < 1:
            raise GenerateConfigError(f"--days must be at least 1 (got {self.days})")
        if self.records < 0:
            raise GenerateConfigError(f"--records cannot be negative (got {self.records})")
        if self.records > MAX_RECORDS_PER_DAY * self.days:
            raise GenerateConfigError(
                f"--records {self.records} over {self.days} days is more than "
                f"{MAX_RECORDS_PER_DAY} a day; timestamps would repeat. Raise --days."
            )
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise GenerateConfigError(
                f"--bad-fraction must be between 0 and 1 (got {self.bad_fraction})"
            )
        if not 0.0 <= self.pii_rate <= 1.0:
            raise GenerateConfigError(f"--pii-rate must be between 0 and 1 (got {self.pii_rate})")
        for flag, value in (("--products", self.products), ("--users", self.users)):
            if value is not None and value < 1:
                raise GenerateConfigError(f"{flag} must be at least 1 (got {value})")

    @property
    def product_count(self) -> int:
        """About one product per 200 records: a long tail that interactions still reach."""
        if self.products is not None:
            return self.products
        return min(max(self.records // 200, 50), 200_000)

    @property
    def user_count(self) -> int:
        """About one registered user per 25 records, so heavy users emerge from the power law."""
        if self.users is not None:
            return self.users
        return min(max(self.records // 25, 50), 2_000_000)


class FileSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One output file.

    `records` counts the lines a reader can get from the file: a truncated last line counts,
    lines beyond the cut of a truncated gzip stream do not (they are `lost_records`).
    `valid` counts the records that pass `RecordValidator(kind, Rules())`.
    For the empty file and the truncated gzip file, `recoverable_valid` says how many complete
    valid lines precede the cut.
    """

    path: str  # relative to the output directory
    kind: FileKind
    records: int
    valid: int
    bytes: int  # size on disk
    defects: dict[str, int] = msgspec.field(default_factory=dict)
    recoverable_valid: int | None = None
    lost_records: int = 0
    pii: dict[str, int] = msgspec.field(default_factory=dict)  # "email@search.keywords": n


class DefectKind(msgspec.Struct, frozen=True):
    """How a defect kind behaves, so tests need not hard-code it."""

    rule_only: bool  # valid for Miso's schema, invalid only under the default backfill Rules
    per_file: bool  # a defect of the whole file (line 0) or of its cut point


class GenerateSummary(msgspec.Struct, kw_only=True):
    """The manifest: the output described file by file, with every defect located.

    `defect_lines` holds [path, 1-based line, kind]; a defect of a file as a whole (the empty
    file) has line 0, a truncated gzip stream the line at which the cut falls.
    Totals (`records`, `valid`, `defects`) cover interaction files only.
    """

    seed: int
    start: date
    days: int
    format: Format
    bad_fraction: float
    files: list[FileSummary]
    records: int
    valid: int
    lost_records: int
    defects: dict[str, int]
    defect_lines: list[tuple[str, int, str]]
    defect_kinds: dict[str, DefectKind]
    products: int
    users: int
    bytes: int
    # --pii-rate: lines that carry personal data (still valid records), as [path, line, tag]
    # with tag "kind@field", the key under which the privacy step counts its findings
    pii_rate: float = 0.0
    pii: dict[str, int] = msgspec.field(default_factory=dict)
    pii_lines: list[tuple[str, int, str]] = msgspec.field(default_factory=list)

    def interaction_files(self) -> list[FileSummary]:
        return [f for f in self.files if f.kind == "interactions"]


def defect_kinds() -> dict[str, DefectKind]:
    return {
        kind: DefectKind(rule_only=kind in RULE_ONLY_KINDS, per_file=kind in FILE_DEFECTS)
        for kind in DEFECT_KINDS
    }


def load_manifest(out: str | Path) -> GenerateSummary:
    """The manifest a previous run wrote into `out` (a directory or the manifest itself)."""
    path = Path(out)
    if path.is_dir():
        path = path / MANIFEST_NAME
    return msgspec.json.decode(path.read_bytes(), type=GenerateSummary)
