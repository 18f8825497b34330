"""The Block contract (contiguous units, exact offsets, records held across blocks, resume),
and full mapped loads against the embedded server: exact records, exact dead letters."""

from __future__ import annotations

import gzip
import json
import tomllib
from pathlib import Path
from typing import Any

from backfill.mapping import map_file_blocks
from backfill.server import RunningServer
from backfill.sources import Block, LocalFile, Start, open_blocks
from tests.helpers import dead_letters, run_engine
from tests.mapping.helpers import TEXT_TABLE, load_sample, make, multiline_csv

# ---------------------------------------------------------------------------------------------
# The Block contract: contiguous units, exact offsets, records held across blocks, resume.
# ---------------------------------------------------------------------------------------------


async def test_blocks_stay_contiguous_with_exact_offsets(tmp_path: Path) -> None:
    data, expected = multiline_csv(6_000, pad=500)  # 3 MiB: several reader blocks
    path = tmp_path / "big.csv"
    path.write_bytes(data)
    transform = make(tmp_path, TEXT_TABLE)
    starts = [0, *(i + 1 for i, b in enumerate(data) if b == 10)]  # offset of each line
    next_line, records, boundaries = 0, [], 0
    async for block in map_file_blocks(transform, LocalFile.at(path)):
        assert block.first == next_line and block.raw_lengths is not None
        assert len(block.raw_lengths) == len(block.lines)
        assert block.offset == starts[block.first]
        end = block.first + len(block.lines)
        assert block.end_offset(end) == starts[end]
        records.extend(json.loads(x)["context"]["custom_context"] for x in block.lines if x)
        next_line = end
        boundaries += 1
    assert boundaries > 2 and next_line == len(starts) - 1
    assert records == expected


async def test_resume_at_a_record_boundary_and_inside_a_record(tmp_path: Path) -> None:
    data, expected = multiline_csv(3_500, pad=500)
    path = tmp_path / "big.csv.gz"
    path.write_bytes(gzip.compress(data, mtime=0))
    transform = make(tmp_path, TEXT_TABLE)
    full: dict[int, bytes] = {}
    offsets: dict[int, int] = {}
    async for block in map_file_blocks(transform, LocalFile.at(path)):
        for slot, line in enumerate(block.lines):
            offsets[block.first + slot] = block.end_offset(block.first + slot)
            if line:
                full[block.first + slot] = line
    record_starts = sorted(full)
    at_record = record_starts[len(record_starts) * 2 // 3]
    inside = next(i for i in record_starts[len(record_starts) // 3 :] if i + 1 not in full) + 1
    assert inside not in full  # a continuation line: the record began on the line before
    for start in (at_record, inside):
        resumed: dict[int, bytes] = {}
        blocks = open_blocks(LocalFile.at(path), Start(start, offsets[start]), [transform])
        async for block in blocks:
            for slot, line in enumerate(block.lines):
                if line:
                    resumed[block.first + slot] = line
        assert resumed == {i: line for i, line in full.items() if i >= start}
    assert len(full) == len(expected)


async def test_a_record_held_across_hand_made_blocks(tmp_path: Path) -> None:
    """The reader's blocks are 1 MiB; here a record is cut by every block boundary."""
    path = tmp_path / "in.csv"
    text = b'user,note,n\nu1,"a\nb\nc",1\nu2,d,2\n'
    path.write_bytes(text)
    lines = text.split(b"\n")[:-1]
    blocks = [Block(lines[i : i + 2], i, sum(len(x) + 1 for x in lines[:i]), 0) for i in (0, 2, 4)]

    async def hand_made() -> Any:
        for b in blocks:
            yield b

    out = [b async for b in make(tmp_path, TEXT_TABLE).blocks(LocalFile.at(path), hand_made())]
    assert [(b.first, len(b.lines), b.offset) for b in out] == [(0, 1, 0), (1, 3, 12), (4, 1, 25)]
    assert out[1].raw_lengths == [5, 1, 4] and out[1].lines[1:] == [b"", b""]
    assert out[1].end_offset(4) == 25
    assert json.loads(out[1].lines[0])["context"]["custom_context"]["note"] == "a\nb\nc"
    assert json.loads(out[2].lines[0])["user_id"] == "u2"


# ---------------------------------------------------------------------------------------------
# Full mapped loads against the embedded server: exact records, exact dead letters.
# ---------------------------------------------------------------------------------------------


async def test_ecommerce_csv_sample_loads_exactly(tmp_path: Path, server: RunningServer) -> None:
    report, stored = await load_sample(
        tmp_path, server, "ecommerce-events.csv", "mapping-ecommerce-csv.toml"
    )
    assert report["exit_code"] == 0
    assert (report["records_read"], report["records_accepted"]) == (18, 16)
    assert (report["records_invalid"], report["records_filtered"]) == (1, 1)
    assert [r["type"] for r in stored] == ["product_detail_page_view"] * 5 + [
        "add_to_cart",
        "product_detail_page_view",
        "product_detail_page_view",
        "remove_from_cart",
        "product_detail_page_view",
        "add_to_cart",
        "product_detail_page_view",
        "checkout",
        "product_detail_page_view",
        "product_detail_page_view",
        "product_detail_page_view",
    ]
    assert stored[12] == {
        "type": "checkout",
        "context": {
            "custom_context": {
                "category_id": "2053013555631882655",
                "brand": "apple",
                "user_session": "c6bd7419-2748-4c56-95b4-8cec9ff8b80d",
                "price": 1081.98,
                "category": ["electronics", "smartphone"],
            }
        },
        "timestamp": "2019-10-01T00:00:19.000Z",
        "user_id": "535871217",
        "product_ids": ["1004237"],
        "revenue": 1081.98,
    }
    assert all("revenue" not in r for r in stored if r["type"] != "checkout")
    [entry] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert entry["line"] == 17 and entry["stage"] == "client"
    assert (
        entry["reason"]
        == 'event_type: "wishlist" is not in the values of type (unmapped = "dead_letter")'
    )
    assert entry["record"].startswith("2019-10-01 00:00:22 UTC,wishlist,1005011,")


async def test_segment_jsonl_sample_loads_exactly(tmp_path: Path, server: RunningServer) -> None:
    report, stored = await load_sample(
        tmp_path, server, "segment-events.jsonl", "mapping-segment-jsonl.toml"
    )
    assert (report["records_read"], report["records_accepted"]) == (9, 6)
    assert (report["records_invalid"], report["records_filtered"]) == (1, 2)
    assert [(r["type"], r.get("custom_action_name")) for r in stored] == [
        ("product_detail_page_view", None),
        ("add_to_cart", None),
        ("search", None),
        ("checkout", None),
        ("custom", "Coupon Applied"),
        ("product_detail_page_view", None),
    ]
    assert stored[0]["context"] == {
        "custom_context": {
            "name": "Trail Runner",
            "price": 89.5,
            "category": "shoes",
            "currency": "USD",
        },
        "page": {
            "url": "https://shop.example.com/p/1",
            "referrer": "https://www.google.com/",
            "title": "Trail Runner",
        },
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "locale": "en-US",
    }
    assert stored[1]["quantities"] == 2 and stored[2]["search"] == {"keywords": "waterproof jacket"}
    assert stored[3]["product_ids"] == ["p-1", "p-7"] and stored[3]["revenue"] == 179.0
    assert stored[5]["timestamp"] == "2026-05-01T08:06:00.000Z" and stored[5]["product_ids"] == [
        "42"
    ]
    [entry] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert entry["line"] == 8 and "last tuesday" in entry["reason"]


async def test_mapped_gzip_csv_with_multiline_records_loads_exactly(
    tmp_path: Path, server: RunningServer
) -> None:
    data, expected = multiline_csv(4_000)
    path = tmp_path / "notes.csv.gz"
    path.write_bytes(gzip.compress(data, mtime=0))
    table = tomllib.loads(TEXT_TABLE)
    report = await run_engine(
        tmp_path,
        server.url,
        server.secret_key,
        [str(path)],
        mapping=table["mapping"],
        allow_missing_timestamp=True,
        batch_size=500,
        concurrency=4,
    )
    stored = [json.loads(r)["context"]["custom_context"] for r in server.records("interactions")]
    assert sorted(stored, key=lambda c: int(c["n"])) == expected
    assert report["records_read"] == report["records_accepted"] == 4_000
    assert report["records_invalid"] == 0 and report["batches_sent"] == 8
    assert dead_letters(tmp_path / "state" / "dead-letter.jsonl") == []
