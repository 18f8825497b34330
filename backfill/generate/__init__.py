"""Synthetic Miso logs with the shape of real traffic, and the defects real logs have.

`generate(GenerateConfig(out=..., records=..., seed=...))` writes `interactions-<day>.jsonl.gz`
files in date order, `products.jsonl.gz`, `users.jsonl.gz` and `manifest.json`, and returns
the manifest as a `GenerateSummary`. Same config, same bytes.

    model        the config and the manifest types, defect kinds
    catalog      category tree, products, users, power-law popularity
    seasonality  records per day and minute; increasing millisecond timestamps
    sessions     visitors walking the funnel: the hot loop that renders lines
    defects      one function per defect kind
    output       gzip/plain sinks, the empty file, the cut gzip stream
    run          the run: files in order, the manifest
    cli          the `generate` subcommand
"""

from backfill.generate.cli import add_parser, cmd_generate
from backfill.generate.model import (
    DEFECT_KINDS,
    FILE_DEFECTS,
    LINE_DEFECTS,
    MANIFEST_NAME,
    RULE_ONLY_KINDS,
    DefectKind,
    FileSummary,
    GenerateConfig,
    GenerateConfigError,
    GenerateSummary,
    load_manifest,
)
from backfill.generate.run import generate

__all__ = [
    "DEFECT_KINDS",
    "FILE_DEFECTS",
    "LINE_DEFECTS",
    "MANIFEST_NAME",
    "RULE_ONLY_KINDS",
    "DefectKind",
    "FileSummary",
    "GenerateConfig",
    "GenerateConfigError",
    "GenerateSummary",
    "add_parser",
    "cmd_generate",
    "generate",
    "load_manifest",
]
