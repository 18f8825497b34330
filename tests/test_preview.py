"""`backfill preview`: records before and after the mapping, side by side, with verdicts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from backfill.config import load_settings
from backfill.errors import UsageError
from backfill.preview import GUTTER, Shown, add_parser, preview, render
from backfill.sources import LocalFile

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ECOMMERCE = (CONFIGS / "mapping-ecommerce-csv.toml", CONFIGS / "samples" / "ecommerce-events.csv")
SEGMENT = (CONFIGS / "mapping-segment-jsonl.toml", CONFIGS / "samples" / "segment-events.jsonl")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backfill")
    add_parser(parser.add_subparsers())
    return parser.parse_args(["preview", *argv])


async def shown(config: Path, data: Path, limit: int) -> list[Shown]:
    return await preview(
        load_settings(str(config), {"inputs": [str(data)]}), LocalFile.at(data), limit
    )


async def test_csv_rows_before_and_after_with_verdicts() -> None:
    records = await shown(*ECOMMERCE, 20)
    assert len(records) == 18  # 19 lines, less the header
    assert [r.line for r in records] == list(range(2, 20))
    first = records[0]
    assert first.verdict == "valid" and first.valid
    assert isinstance(first.source, dict) and first.source["event_type"] == "view"
    assert first.source["category_code"] == ""
    assert first.mapped is not None
    assert json.loads(first.mapped)["timestamp"] == "2019-10-01T00:00:00.000Z"
    by_line = {r.line: r for r in records}
    assert by_line[17].verdict == "dead letter" and not by_line[17].valid
    assert by_line[17].why == (
        'event_type: "wishlist" is not in the values of type (unmapped = "dead_letter")'
    )
    assert by_line[17].mapped is None and by_line[17].source["event_type"] == "wishlist"
    assert (by_line[18].verdict, by_line[18].why) == (
        "left out",
        "mapping.drop[0]: user_id is missing",
    )
    assert sum(r.verdict == "valid" for r in records) == 16


async def test_json_records_and_every_kind_of_verdict() -> None:
    records = await shown(*SEGMENT, 9)
    assert [r.verdict for r in records] == [
        "valid",
        "valid",
        "left out",
        "valid",
        "valid",
        "valid",
        "left out",
        "dead letter",
        "valid",
    ]
    assert records[2].why == 'mapping.drop[0]: type not in ["track"]'
    assert records[7].why.startswith('timestamp/originalTimestamp: cannot parse "last tuesday"')
    assert records[7].source["messageId"] == "ajs-8"
    assert records[4].mapped is not None
    assert json.loads(records[4].mapped)["product_ids"] == ["p-1", "p-7"]


async def test_validation_verdicts_after_mapping(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(
        '[mapping]\nformat = "csv"\n[mapping.fields]\n'
        'type = { const = "product_detail_page_view" }\nuser_id = "user"\n'
        'timestamp = { from = "t", convert = "epoch_s" }\n'
        '"context.custom_context.note" = "note"\n'
    )
    data = tmp_path / "in.csv"
    data.write_text('user,t,note\nu1,1569888000,"two\nlines"\nu2,,no time\nu3,1569888000,"open\n')
    records = await shown(config, data, 10)
    assert [(r.line, r.verdict) for r in records] == [
        (2, "valid"),
        (4, "dead letter"),
        (5, "dead letter"),
    ]
    assert records[0].source == {"user": "u1", "t": "1569888000", "note": "two\nlines"}
    assert records[1].why.startswith("missing timestamp")
    assert records[1].mapped is not None  # refused by validation: the mapped record is shown
    assert records[2].why.startswith("unterminated quoted value")
    assert records[2].source == b'u3,1569888000,"open'  # could not be parsed: the raw line


async def test_native_input_without_mapping(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("allow_anonymous = true\n")
    data = tmp_path / "in.jsonl"
    good = {"type": "home_page_view", "timestamp": "2026-01-01T00:00:00Z"}
    data.write_text(json.dumps(good) + "\n\n" + '{"type": "teleport"}\n')
    records = await shown(config, data, 5)
    assert [(r.line, r.verdict) for r in records] == [(1, "valid"), (3, "dead letter")]
    assert "teleport" in records[1].why


async def test_render_side_by_side_and_stacked() -> None:
    config, data = ECOMMERCE
    settings = load_settings(str(config), {"inputs": [str(data)]})
    records = await preview(settings, LocalFile.at(data), 2)
    wide = render(records, settings, data, 140).splitlines()
    assert wide[0] == f"{data} (csv) -> Miso interactions, first 2 records"
    assert wide[2].startswith("── line 2: valid ──") and len(wide[2]) == 140
    assert wide[3].startswith("source") and wide[3].endswith(GUTTER + "mapped")
    assert any(
        x.startswith("event_type: view") and '"type": "product_detail_page_view"' in x for x in wide
    )
    assert all(len(x) <= 140 for x in wide)
    assert wide[-1] == "2 records: 2 valid, 0 dead letter, 0 left out"
    narrow = render(records, settings, data, 60).splitlines()
    assert not any(GUTTER in x for x in narrow) and all(len(x) <= 60 for x in narrow[1:])
    assert narrow.index("mapped") > narrow.index("source")


def test_command_exit_codes_and_output(capsys: pytest.CaptureFixture[str]) -> None:
    config, data = ECOMMERCE
    args = parse(["--config", str(config), str(data), "-n", "3", "--width", "120"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("── line ") == 3 and "3 records: 3 valid, 0 dead letter, 0 left out" in out
    args = parse(["--config", str(config), str(data), "-n", "16"])
    assert args.func(args) == 1  # line 17 is a dead letter
    assert "1 dead letter" in capsys.readouterr().out
    with pytest.raises(UsageError, match="input not found"):
        args = parse(["--config", str(config), str(data) + ".missing"])
        args.func(args)
    with pytest.raises(UsageError, match="must be positive"):
        args = parse(["--config", str(config), str(data), "-n", "0"])
        args.func(args)


def test_a_bad_mapping_is_reported_before_reading(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[mapping]\nformat = "csv"\n[mapping.fields]\ntype = { from = "e" }\nwhen = "t"\n'
    )
    args = parse(["--config", str(config), str(ECOMMERCE[1])])
    with pytest.raises(UsageError, match=r"bad.toml line 5: mapping.fields.when: .*not a field"):
        args.func(args)


async def test_a_deeply_nested_source_renders_within_the_width(tmp_path: Path) -> None:
    """Indentation deeper than the column once made the wrapping loop forever."""
    config = tmp_path / "m.toml"
    config.write_text(
        'allow_missing_timestamp = true\n[mapping]\nformat = "jsonl"\n[mapping.fields]\n'
        'type = { const = "search" }\nuser_id = "user"\n[mapping.leftovers]\n'
    )
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"user":"u1","x":' + b'{"b":' * 100 + b'"end"' + b"}" * 100 + b"}\n")
    settings = load_settings(str(config), {"inputs": [str(data)]})
    records = await preview(settings, LocalFile.at(data), 1)
    assert [r.verdict for r in records] == ["valid"]
    for width in (60, 140):
        out = render(records, settings, data, width).splitlines()
        assert all(len(x) <= width for x in out[1:])
        assert any(x.strip().startswith('"b": "end"') for x in out)
        assert out[-1] == "1 records: 1 valid, 0 dead letter, 0 left out"


async def test_whitespace_only_lines_are_blank_as_in_a_run(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("allow_anonymous = true\n")
    data = tmp_path / "in.jsonl"
    good = json.dumps({"type": "home_page_view", "timestamp": "2026-01-01T00:00:00Z"})
    data.write_text(f"{good}\n  \t \n \r\n\t\n{good}\n")
    records = await shown(config, data, 5)
    assert [(r.line, r.verdict) for r in records] == [(1, "valid"), (5, "valid")]
