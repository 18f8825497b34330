"""`backfill generate`: valid, deterministic, realistic output, and defects exactly as tagged.

Every check reads the real files back; validity is judged by the engine's own
`backfill.schema.RecordValidator`, so the generator and the engine agree on what "valid" means.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import random
import zlib
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from backfill.generate import (
    DEFECT_KINDS,
    FILE_DEFECTS,
    LINE_DEFECTS,
    MANIFEST_NAME,
    GenerateConfig,
    GenerateConfigError,
    GenerateSummary,
    add_parser,
    generate,
    load_manifest,
)
from backfill.generate.seasonality import allocate, day_weights, minute_counts
from backfill.privacy import PrivacySettings, PrivacyTransform
from backfill.schema import RecordValidator, Rules
from backfill.sources import Block

RECORDS = 20_000
DAYS = 5
STRICT = Rules()
CONTRACT_ONLY = Rules(require_timestamp=False, require_identity=False)


def read_lines(path: Path) -> tuple[list[bytes], bool]:
    """The lines a reader gets from a file, and whether the file ended cleanly.

    Like the engine's reader: a gzip stream cut short yields what inflates, without the
    partial line at the cut; a last line without a newline is still a line.
    """
    raw = path.read_bytes()
    clean = True
    if raw.startswith(b"\x1f\x8b"):
        inflater = zlib.decompressobj(31)
        raw = inflater.decompress(raw)
        clean = inflater.eof
        if not clean:
            raw = raw[: raw.rfind(b"\n") + 1]
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines, clean


def run(tmp: Path, **overrides: object) -> GenerateSummary:
    settings: dict[str, object] = {"out": str(tmp), "days": DAYS, "records": RECORDS, "seed": 7}
    settings.update(overrides)
    return generate(GenerateConfig(**settings))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Run:
    out: Path
    summary: GenerateSummary
    lines: dict[str, list[bytes]]  # interaction file: its lines, read once


def generated(out: Path, **overrides: object) -> Run:
    summary = run(out, **overrides)
    lines = {f.path: read_lines(out / f.path)[0] for f in summary.interaction_files()}
    return Run(out, summary, lines)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return generated(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return generated(tmp_path_factory.mktemp("bad"), bad_fraction=0.05)


# -- a clean run -------------------------------------------------------------------------------


def test_clean_run_files_and_counts(clean: Run) -> None:
    out, summary = clean.out, clean.summary
    days = [(date(2026, 6, 1) + timedelta(days=i)).isoformat() for i in range(DAYS)]
    expected = ["products.jsonl.gz", "users.jsonl.gz"]
    expected += [f"interactions-{d}.jsonl.gz" for d in days]
    assert [f.path for f in summary.files] == expected
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, MANIFEST_NAME])
    assert summary.records == summary.valid == RECORDS
    assert summary.lost_records == 0
    assert summary.defects == {}
    assert summary.defect_lines == []
    for f in summary.files:
        lines, ended_cleanly = read_lines(out / f.path)
        assert ended_cleanly
        assert len(lines) == f.records == f.valid
        assert f.bytes == (out / f.path).stat().st_size
        assert f.defects == {}
    assert summary.bytes == sum(f.bytes for f in summary.files)
    assert load_manifest(out) == summary


def test_clean_run_every_record_is_valid(clean: Run) -> None:
    for f in clean.summary.files:
        validator = RecordValidator(f.kind, STRICT)
        lines = clean.lines.get(f.path) or read_lines(clean.out / f.path)[0]
        assert {validator.check(line) for line in lines} == {None}, f.path


def test_clean_run_lines_are_unique_ordered_and_on_their_day(clean: Run) -> None:
    seen: set[bytes] = set()
    for path, lines in clean.lines.items():
        assert all(not line.endswith(b"\r") for line in lines)
        seen.update(lines)
        stamps = [json.loads(line)["timestamp"] for line in lines]
        assert stamps == sorted(set(stamps))  # strictly increasing within the day
        day = path.removeprefix("interactions-").removesuffix(".jsonl.gz")
        for stamp in stamps:
            assert stamp.startswith(day + "T") and len(stamp) == 24 and stamp.endswith("Z")
            datetime.fromisoformat(stamp)  # millisecond precision, UTC
    assert len(seen) == RECORDS  # no two lines alike: duplicates on a server mean re-sends


def test_clean_run_references_the_catalog(clean: Run) -> None:
    out, summary = clean.out, clean.summary
    products = {json.loads(line)["product_id"] for line in read_lines(out / "products.jsonl.gz")[0]}
    users = {json.loads(line)["user_id"] for line in read_lines(out / "users.jsonl.gz")[0]}
    assert len(products) == summary.products and len(users) == summary.users
    referenced_products: set[str] = set()
    referenced_users: set[str] = set()
    for lines in clean.lines.values():
        for line in lines:
            record = json.loads(line)
            referenced_products.update(record.get("product_ids", ()))
            if "user_id" in record:
                referenced_users.add(record["user_id"])
    assert referenced_products <= products
    assert referenced_users <= users


def test_clean_run_has_a_realistic_shape(clean: Run) -> None:
    records = [json.loads(line) for lines in clean.lines.values() for line in lines]
    sizes = [len(line) + 1 for lines in clean.lines.values() for line in lines]
    assert 320 <= sum(sizes) / len(sizes) <= 400  # the benchmarks assume ~350 bytes a record

    types = collections.Counter(r["type"] for r in records)
    assert types.most_common(1)[0][0] == "product_detail_page_view"
    for kind in ("search", "category_page_view", "add_to_cart", "remove_from_cart", "checkout",
                 "refund", "rate", "custom", "home_page_view"):  # fmt: skip
        assert types[kind] > 0, kind
    for r in records:
        if r["type"] == "checkout":
            assert len(r["quantities"]) == len(r["product_ids"]) and r["revenue"] > 0
        if r["type"] == "add_to_cart":
            assert r["quantities"][0] in (1, 2, 3)

    # Power laws: a bestseller far above the median product, heavy and light users.
    views = collections.Counter(p for r in records for p in r.get("product_ids", ()))
    counts = sorted(views.values(), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]
    per_user = sorted(collections.Counter(r["user_id"] for r in records if "user_id" in r).values())
    assert per_user[-1] > 20 * per_user[len(per_user) // 2]

    # Anonymous visitors, some of whom sign in later: the same device, then with a user id.
    anonymous_only = {
        r["anonymous_id"] for r in records if "user_id" not in r and "anonymous_id" in r
    }
    linked = {r["anonymous_id"] for r in records if "user_id" in r and "anonymous_id" in r}
    assert anonymous_only and linked and anonymous_only & linked
    assert any(r.get("custom_action_name") == "sign_in" for r in records)

    contexts = [r["context"] for r in records]
    assert all(c["page"]["url"].startswith("https://") for c in contexts)
    assert sum("referrer" in c["page"] for c in contexts) > len(contexts) // 2
    assert any("user_agent" in c for c in contexts) and any("campaign" in c for c in contexts)

    # Daily seasonality: the evening peak hour is much busier than the night trough.
    hours = collections.Counter(int(r["timestamp"][11:13]) for r in records)
    assert max(hours.values()) > 3 * min(hours.values())


def test_weekly_and_daily_rhythm() -> None:
    rng = random.Random(1)
    start = date(2026, 6, 1)  # a Monday
    per_day = allocate(1_000_000, day_weights(start, 10 * 7, rng), rng)
    assert sum(per_day) == 1_000_000 and len(per_day) == 70
    mondays, saturdays = per_day[0::7], per_day[5::7]
    assert sum(saturdays) > 1.1 * sum(mondays)
    minutes = minute_counts(100_000, rng)
    assert sum(minutes) == 100_000 and len(minutes) == 24 * 60
    hours = [sum(minutes[h * 60 : (h + 1) * 60]) for h in range(24)]
    assert hours.index(max(hours)) in range(17, 23) and max(hours) > 3 * min(hours)


def test_same_seed_same_bytes(tmp_path: Path, clean: Run) -> None:
    out, summary = clean.out, clean.summary
    again = run(tmp_path / "again")
    assert again == summary
    for name in [f.path for f in summary.files] + [MANIFEST_NAME]:
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    header = (out / summary.files[-1].path).read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == b"\0\0\0\0"  # no file name, mtime 0
    small = {"records": 1_000, "days": 1, "catalog": False}
    seven, eight = run(tmp_path / "7", **small), run(tmp_path / "8", seed=8, **small)
    name = seven.files[0].path
    assert (tmp_path / "7" / name).read_bytes() != (tmp_path / "8" / name).read_bytes()
    assert seven.records == eight.records == 1_000


# -- a run with defects ------------------------------------------------------------------------


def test_bad_run_counts_match_the_files(bad: Run) -> None:
    summary = bad.summary
    assert set(summary.defects) == set(DEFECT_KINDS)
    assert summary.records + summary.lost_records == RECORDS
    tagged = collections.Counter(kind for _, _, kind in summary.defect_lines)
    assert tagged == summary.defects
    for kind in LINE_DEFECTS:  # dealt in shuffled rounds: balanced
        assert abs(summary.defects[kind] - RECORDS * 0.05 / 10) < RECORDS * 0.05 / 10 * 0.3
    for kind in FILE_DEFECTS:
        assert summary.defects[kind] == 1
    for f in summary.interaction_files():
        assert len(bad.lines[f.path]) == f.records
        mine = collections.Counter(kind for path, _, kind in summary.defect_lines if path == f.path)
        assert mine == f.defects
        line_defects = sum(n for kind, n in f.defects.items() if kind in LINE_DEFECTS)
        assert f.valid == f.records - line_defects - f.defects.get("truncated_line", 0)
    assert summary.valid == sum(f.valid for f in summary.interaction_files())


def test_every_tagged_line_fails_and_every_other_line_passes(bad: Run) -> None:
    summary = bad.summary
    strict = RecordValidator("interactions", STRICT)
    contract = RecordValidator("interactions", CONTRACT_ONLY)
    tags = {(path, line): kind for path, line, kind in summary.defect_lines}
    checked = collections.Counter[str]()
    for path, lines in bad.lines.items():
        for number, line in enumerate(lines, 1):
            kind = tags.get((path, number))
            if kind is None:
                assert strict.check(line) is None, (path, number, line[:120])
                continue
            checked[kind] += 1
            assert strict.check(line) is not None, (kind, line[:200])
            rule_only = summary.defect_kinds[kind].rule_only
            assert (contract.check(line) is None) == rule_only, (kind, line[:200])
    in_lines = {
        k: n for k, n in summary.defects.items() if k in LINE_DEFECTS or k == "truncated_line"
    }
    assert checked == in_lines


def test_file_defects_are_what_the_manifest_says(bad: Run) -> None:
    out, summary = bad.out, bad.summary
    by_kind = {
        kind: (path, line) for path, line, kind in summary.defect_lines if kind in FILE_DEFECTS
    }
    files = {f.path: f for f in summary.files}

    empty, line = by_kind["empty_file"]
    assert line == 0 and (out / empty).stat().st_size == 0
    assert files[empty].records == files[empty].valid == files[empty].recoverable_valid == 0

    cut, line = by_kind["truncated_gzip"]
    lines, ended_cleanly = read_lines(out / cut)
    assert not ended_cleanly and line == len(lines) + 1 == files[cut].records + 1
    inflated = zlib.decompressobj(31).decompress((out / cut).read_bytes())
    assert not inflated.endswith(b"\n")  # part of line `line` is there: one broken line
    assert files[cut].lost_records > 0
    assert files[cut].recoverable_valid == files[cut].valid
    with pytest.raises(EOFError):
        gzip.decompress((out / cut).read_bytes())

    truncated, line = by_kind["truncated_line"]
    raw = gzip.decompress((out / truncated).read_bytes())
    assert not raw.endswith(b"\n") and line == files[truncated].records == raw.count(b"\n") + 1


def test_defects_replace_lines_without_shifting_them(clean: Run, bad: Run) -> None:
    tags = {(path, line) for path, line, _ in bad.summary.defect_lines}
    for path, lines in bad.lines.items():
        if path not in clean.lines:
            continue  # the empty file
        for number, line in enumerate(lines, 1):
            if (path, number) not in tags:
                assert line == clean.lines[path][number - 1]


def test_plain_jsonl_has_no_gzip_defect(tmp_path: Path) -> None:
    summary = run(tmp_path, records=3_000, days=2, bad_fraction=0.1, catalog=False, format="jsonl")
    assert all(f.path.endswith(".jsonl") for f in summary.files)
    assert "truncated_gzip" not in summary.defects
    assert summary.records == 3_000 and summary.products == summary.users == 0
    for f in summary.files:
        lines, _ = read_lines(tmp_path / f.path)
        assert len(lines) == f.records
        assert not (tmp_path / f.path).read_bytes().startswith(b"\x1f\x8b")


def test_manifest_is_plain_json(bad: Run) -> None:
    out, summary = bad.out, bad.summary
    manifest = json.loads((out / MANIFEST_NAME).read_bytes())
    assert manifest["records"] == summary.records
    assert manifest["defect_kinds"]["missing_identity"] == {"rule_only": True, "per_file": False}
    empty = next(f.path for f in summary.files if "empty_file" in f.defects)
    assert [empty, 0, "empty_file"] in manifest["defect_lines"]
    assert msgspec.json.decode((out / MANIFEST_NAME).read_bytes(), type=GenerateSummary) == summary


# -- configuration and command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"days": 0}, "--days"),
        ({"records": -1}, "--records"),
        ({"bad_fraction": 1.5}, "--bad-fraction"),
        ({"products": 0}, "--products"),
        ({"records": 10**9, "days": 1}, "--days"),
    ],
)
def test_config_errors_name_the_flag(overrides: dict[str, object], flag: str) -> None:
    settings: dict[str, object] = {"out": "unused"}
    settings.update(overrides)
    with pytest.raises(GenerateConfigError, match=flag):
        GenerateConfig(**settings)  # type: ignore[arg-type]


def test_regenerating_replaces_the_previous_output(tmp_path: Path) -> None:
    run(tmp_path, records=2_000, days=4, bad_fraction=0.2)
    (tmp_path / "notes.txt").write_text("not ours")
    summary = run(tmp_path, records=2_000, days=2)
    ours = {f.path for f in summary.files} | {MANIFEST_NAME}
    assert {p.name for p in tmp_path.iterdir()} == ours | {"notes.txt"}


def test_tiny_runs(tmp_path: Path) -> None:
    none = run(tmp_path / "none", records=0, days=3, bad_fraction=0.5)
    assert none.records == 0 and none.defects == {"empty_file": 1}
    one = run(tmp_path / "one", records=1, days=1, products=1, users=1)
    assert one.records == one.valid == 1


def test_cli_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="backfill")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["generate", "--out", str(tmp_path), "--days", "3", "--records", "2000", "--seed", "3"]
    args = parser.parse_args([*argv, "--format", "jsonl", "--start", "2026-01-30", "--no-catalog"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "2,000 interactions" in printed and "records/s" in printed
    names = sorted(p.name for p in tmp_path.glob("interactions-*"))
    assert names == [f"interactions-2026-{d}.jsonl" for d in ("01-30", "01-31", "02-01")]

    args = parser.parse_args([*argv, "--bad-fraction", "2"])
    assert args.func(args) == 2
    assert "--bad-fraction" in capsys.readouterr().err

    (tmp_path / "a-file").write_text("")
    args = parser.parse_args(["generate", "--out", str(tmp_path / "a-file"), "--records", "10"])
    assert args.func(args) == 2
    assert "cannot write to" in capsys.readouterr().err


# -- personal data (--pii-rate) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return generated(tmp_path_factory.mktemp("pii"), pii_rate=0.03, bad_fraction=0.02)


def test_pii_tags_match_what_the_privacy_scan_finds(leaky: Run) -> None:
    """The manifest counts PII the way the privacy step does: kind@field, line by line."""
    summary = leaky.summary
    assert summary.pii_rate == 0.03
    assert sum(summary.pii.values()) == len(summary.pii_lines) > RECORDS * 0.02
    assert {tag.split("@")[0] for tag in summary.pii} == {"email", "phone", "card"}
    tagged = {(path, line): tag for path, line, tag in summary.pii_lines}
    defects = {(path, line) for path, line, _ in summary.defect_lines}
    assert not tagged.keys() & defects
    scan = PrivacyTransform(PrivacySettings(pii="warn"), None, "interactions")
    found: dict[tuple[str, int], str] = {}
    for path, lines in leaky.lines.items():
        for number, text in enumerate(lines, 1):
            if (path, number) in defects:
                continue
            before = dict(scan.counts.findings)
            scan.apply(Block([text], number - 1, 0, 0))
            new = {k: v for k, v in scan.counts.findings.items() if v != before.get(k, 0)}
            if new:
                assert list(new.values()) == [before.get(*new, 0) + 1], (path, number, new)
                found[(path, number)] = next(iter(new))
    assert found == tagged
    assert dict(scan.counts.findings) == summary.pii
    files = {f.path: f.pii for f in summary.interaction_files() if f.pii}
    assert sum(sum(v.values()) for v in files.values()) == len(tagged)


def test_pii_lines_stay_valid_and_replace_lines_without_shifting_them(
    leaky: Run, tmp_path: Path
) -> None:
    check = RecordValidator("interactions", STRICT).check
    for path, line, _ in leaky.summary.pii_lines:
        assert check(leaky.lines[path][line - 1]) is None, (path, line)
    same = generated(tmp_path, bad_fraction=0.02)
    tagged = {(path, line) for path, line, _ in leaky.summary.pii_lines}
    for path, lines in same.lines.items():
        # strict=False: where the gzip stream is cut depends on the compressed size
        for number, (plain, leaked) in enumerate(zip(lines, leaky.lines[path], strict=False), 1):
            assert (plain == leaked) != ((path, number) in tagged), (path, number)
    assert same.summary.pii == {} and same.summary.pii_lines == []


def test_pii_rate_is_checked_and_reaches_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(GenerateConfigError, match="--pii-rate"):
        GenerateConfig(out="unused", pii_rate=2.0)
    parser = argparse.ArgumentParser(prog="backfill")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["generate", "--out", str(tmp_path), "--days", "1", "--records", "3000"]
    args = parser.parse_args([*argv, "--pii-rate", "0.05", "--no-catalog", "--seed", "5"])
    assert args.func(args) == 0
    manifest = load_manifest(tmp_path)
    assert f"{len(manifest.pii_lines):,} with personal data" in capsys.readouterr().out
    assert 100 <= len(manifest.pii_lines) <= 200
