"""The engine against the embedded server on 127.0.0.1: exact records in, exact records out."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

from backfill.server import Faults, RunningServer, ServerConfig, start_server
from tests.helpers import dead_letters, interaction, line, numbers, run_engine, write_lines


async def test_clean_load_arrives_exactly_once(tmp_path: Path, server: RunningServer) -> None:
    lines = [line(interaction(i)) for i in range(25_000)]
    write_lines(tmp_path / "day1.jsonl", lines[:9_000])
    write_lines(tmp_path / "day2.jsonl.gz", lines[9_000:20_000], gz=True)
    # gzip detected by magic bytes, not by name
    write_lines(tmp_path / "day3.log", lines[20_000:], gz=True)
    inputs = [
        str(tmp_path / "day1.jsonl"),
        str(tmp_path / "day2.jsonl.gz"),
        str(tmp_path / "day3.log"),
    ]
    report = await run_engine(tmp_path, server.url, server.secret_key, inputs, concurrency=4)
    stored = server.records("interactions")
    assert sorted(stored) == sorted(lines)
    assert report["exit_code"] == 0
    assert report["records_read"] == report["records_valid"] == report["records_accepted"] == 25_000
    assert report["records_invalid"] == report["records_rejected_by_server"] == 0
    assert report["possibly_duplicated"] == 0
    # 9k + 10k + 1k + 5k: batches never span files
    assert report["batches_sent"] == 4


async def test_directory_and_glob_inputs_go_in_sorted_order(
    tmp_path: Path, server: RunningServer
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    for day in (3, 1, 2):
        write_lines(
            logs / f"2026-06-0{day}.jsonl", [line(interaction(day * 100 + i)) for i in range(5)]
        )
    (logs / "notes.txt").write_text("not a log")
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(logs)], concurrency=1)
    assert numbers(server.records("interactions")) == [
        d * 100 + i for d in (1, 2, 3) for i in range(5)
    ]
    assert report["records_accepted"] == 15


async def test_bad_lines_are_dead_lettered_and_the_rest_arrives(
    tmp_path: Path, server: RunningServer
) -> None:
    good = [line(interaction(i)) for i in range(10)]
    content = [
        b"\xef\xbb\xbf" + good[0],  # BOM
        good[1],
        b'{"type": "product_detail_page_view", "user_id": ',  # malformed JSON
        good[2],
        b'{"type":"add_to_cart","user_id":"\xff\xfe","timestamp":"2026-06-01T00:00:00Z"}',
        b"",  # blank line: skipped, not an error
        good[3],
        line({**interaction(4), "timestamp": "yesterday"}),
        line({**interaction(5), "type": "teleport"}),
        line({**interaction(6), "colour": "red"}),
        b'{"type":"search","timestamp":"2026-06-01T00:00:00Z","x":"' + b"y" * 5000 + b'"}',
        good[7],
    ]
    path = write_lines(tmp_path / "mixed.jsonl", content, newline=b"\r\n")
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], max_line_bytes=4096
    )
    assert numbers(server.records("interactions")) == [0, 1, 2, 3, 7]
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    by_line = {e["line"]: e for e in entries}
    assert sorted(by_line) == [3, 5, 8, 9, 10, 11]
    assert all(e["source"] == str(path) and e["stage"] == "client" for e in entries)
    assert "malformed JSON" in by_line[3]["reason"]
    assert "UTF-8" in by_line[5]["reason"]
    assert by_line[8]["reason"].startswith("timestamp:") and "yesterday" in by_line[8]["reason"]
    assert "teleport" in by_line[9]["reason"]
    assert "colour" in by_line[10]["reason"]
    assert "longer than 4096 bytes" in by_line[11]["reason"]
    assert report["records_invalid"] == 6 and report["records_accepted"] == 5


async def test_truncated_gzip_keeps_every_complete_record(
    tmp_path: Path, server: RunningServer
) -> None:
    lines = [line(interaction(i)) for i in range(3_000)]
    whole = gzip.compress(b"".join(x + b"\n" for x in lines), mtime=0)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(cut), str(empty)], max_invalid_ratio=1.0
    )
    got = numbers(server.records("interactions"))
    assert got == list(range(len(got))) and 0 < len(got) < 3_000
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert len(entries) == 1 and entries[0]["line"] == len(got) + 1
    assert "truncated gzip" in entries[0]["reason"]
    assert any("truncated gzip" in w for w in report["warnings"])
    assert any("empty file" in w for w in report["warnings"])
    assert report["exit_code"] == 0


async def test_422_drops_exactly_the_named_records(tmp_path: Path, server: RunningServer) -> None:
    server.set_faults(Faults(reject_user_id="^bad-"))
    recs = [interaction(i, user=f"bad-{i}" if i % 1000 == 7 else None) for i in range(5_000)]
    path = write_lines(tmp_path / "a.jsonl", [line(r) for r in recs])
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=2_000
    )
    expected = [i for i in range(5_000) if i % 1000 != 7]
    assert sorted(numbers(server.records("interactions"))) == expected
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert sorted(e["line"] for e in entries) == [i + 1 for i in range(5_000) if i % 1000 == 7]
    assert all(e["stage"] == "server" and "is invalid" in e["reason"] for e in entries)
    assert report["records_rejected_by_server"] == 5 and report["records_accepted"] == 4_995
    assert (await server.stats())["interactions"]["duplicates"] == 0


async def test_413_splits_until_bodies_fit(tmp_path: Path, server: RunningServer) -> None:
    server.set_faults(Faults(max_body_bytes=60_000))
    recs = [line(interaction(i)) for i in range(4_000)]
    huge = line(
        {**interaction(4_000), "context": {"custom_context": {"n": 4_000, "pad": "z" * 70_000}}}
    )
    path = write_lines(tmp_path / "a.jsonl", [*recs[:2_000], huge, *recs[2_000:]])
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)])
    assert sorted(numbers(server.records("interactions"))) == list(range(4_000))
    entries = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert [(e["line"], e["stage"]) for e in entries] == [(2_001, "server")]
    assert "413" in entries[0]["reason"]
    assert report["records_accepted"] == 4_000 and report["batches_sent"] > 2


async def test_429_and_5xx_are_retried(tmp_path: Path, server: RunningServer) -> None:
    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(3_000)])
    server.set_faults(Faults(fail_first=2, fail_status=429, retry_after=0.2))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=1_000, concurrency=1
    )
    assert sorted(numbers(server.records("interactions"))) == list(range(3_000))
    assert report["retries"] == 2 and report["batches_sent"] == 5

    await server.reset()
    server.set_faults(Faults(fail_first=3, fail_status=502))
    report = await run_engine(
        tmp_path / "again", server.url, server.secret_key, [str(path)], batch_size=1_000
    )
    assert sorted(numbers(server.records("interactions"))) == list(range(3_000))
    assert report["retries"] == 3


async def test_dropped_connections_and_stalls_are_retried(
    tmp_path: Path, server: RunningServer
) -> None:
    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(2_000)])
    server.set_faults(Faults(drop_rate=0.3, stall_rate=0.2, stall_seconds=5, seed=7))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=100, request_timeout=1.0
    )
    stored = numbers(server.records("interactions"))
    assert sorted(set(stored)) == list(range(2_000))
    assert report["retries"] > 0 and report["exit_code"] == 0


async def test_wrong_key_stops_at_once_and_resumes(tmp_path: Path, server: RunningServer) -> None:
    rows = [line(interaction(i)) for i in range(3_000)]
    path = write_lines(tmp_path / "a.jsonl", [*rows[:10], b"{broken", *rows[10:]])
    report = await run_engine(tmp_path, server.url, "not-the-key", [str(path)], batch_size=1_000)
    assert report["exit_code"] == 3 and "refused" in report["error"]
    assert report["retries"] == 0 and server.records("interactions") == []
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=1_000
    )
    assert sorted(numbers(server.records("interactions"))) == list(range(3_000))
    assert report["exit_code"] == 0 and report["records_accepted"] == 3_000


async def test_publishable_key_is_refused_with_advice(
    tmp_path: Path, server: RunningServer
) -> None:
    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(10)])
    report = await run_engine(tmp_path, server.url, server.publishable_key, [str(path)])
    assert report["exit_code"] == 3 and "secret key" in report["error"]
    assert server.records("interactions") == []


async def test_retries_exhausted_stops_resumably(tmp_path: Path, server: RunningServer) -> None:
    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(2_000)])
    server.set_faults(Faults(fail_first=1_000, fail_status=503))
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=500, max_attempts=3
    )
    assert report["exit_code"] == 3 and "gave up after 3 attempts" in report["error"]
    assert server.records("interactions") == []
    # the report counts the attempts of batches that were never acknowledged too
    attempted = report["batches_sent"] // 3  # each batch taken made its 3 attempts
    assert report["batches_sent"] == 3 * attempted and report["retries"] == 2 * attempted >= 2
    server.set_faults(Faults())
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)], batch_size=500)
    assert sorted(numbers(server.records("interactions"))) == list(range(2_000))
    assert report["exit_code"] == 0 and report["records_accepted"] == 2_000
    assert report["possibly_duplicated"] == 0


async def test_too_many_invalid_records_stop_the_run(tmp_path: Path, server: RunningServer) -> None:
    rows = [b'{"event": "view", "sku": "%d"}' % i for i in range(300)]
    path = write_lines(tmp_path / "wrong-shape.jsonl", rows)
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], invalid_ratio_window=100
    )
    assert report["exit_code"] == 3 and "--max-invalid-ratio" in report["error"]


async def test_the_invalid_ratio_stop_dead_letters_and_counts_every_line_read(
    tmp_path: Path, server: RunningServer
) -> None:
    """Two lines in three are invalid: the stop comes after 4 batches of 30 lines (a batch
    closes at 20 invalid; the window is 100); each invalid line of those 120 is dead-lettered."""
    rows = []
    for i in range(100):
        rows += [line(interaction(i)), b'{"event": "view", "sku": "%d"}' % i, b"{broken"]
    path = write_lines(tmp_path / "a.jsonl", rows)
    run = dict(batch_size=20, concurrency=2, invalid_ratio_window=100)
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)], **run)
    assert report["exit_code"] == 3
    assert "80 of the first 120 records are invalid" in report["error"]
    dead = tmp_path / "state" / "dead-letter.jsonl"
    assert sorted(e["line"] for e in dead_letters(dead)) == [n + 1 for n in range(120) if n % 3]
    assert report["records_read"] == 120 and report["records_invalid"] == 80
    assert report["records_accepted"] == 40  # the valid records of what was read
    assert numbers(server.records("interactions")) == list(range(40))

    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], **run, max_invalid_ratio=1.0
    )
    assert report["exit_code"] == 0 and report["records_read"] == 300
    assert sorted(e["line"] for e in dead_letters(dead)) == [n + 1 for n in range(300) if n % 3]
    assert sorted(numbers(server.records("interactions"))) == list(range(100))


async def test_a_small_input_that_is_all_invalid_says_why(
    tmp_path: Path, server: RunningServer
) -> None:
    """Fewer records than the ratio window, none valid: exit 3 with the likely cause."""
    export = tmp_path / "export.json"
    export.write_text(json.dumps([interaction(0), interaction(1)], indent=2))
    report = await run_engine(tmp_path / "1", server.url, server.secret_key, [str(export)])
    assert report["exit_code"] == 3 and report["status"] == "stopped"
    lines = export.read_text().count("\n") + 1
    assert f"all {lines} records read are invalid, so nothing was loaded" in report["error"]
    assert "this looks like one JSON document" in report["error"]
    assert report["records_invalid"] == lines

    events = write_lines(tmp_path / "events.jsonl", [line(interaction(i)) for i in range(5)])
    report = await run_engine(
        tmp_path / "2", server.url, server.secret_key, [str(events)], kind="products"
    )
    assert report["exit_code"] == 3
    assert "all 5 records read are invalid" in report["error"]
    assert "look like interactions, not products: use --kind interactions" in report["error"]
    assert (await server.stats())["requests"]["total"] == 0

    one = write_lines(tmp_path / "one.jsonl", [b'{"sku": 1}'])
    report = await run_engine(tmp_path / "3", server.url, server.secret_key, [str(one)])
    assert report["exit_code"] == 3 and "the only record read is invalid" in report["error"]
    assert "logs of another shape need a [mapping]" in report["error"]
    report = await run_engine(
        tmp_path / "4", server.url, server.secret_key, [str(one)], max_invalid_ratio=1.0
    )
    assert report["exit_code"] == 0  # accepted on purpose


async def test_the_report_keeps_the_warnings_of_every_leg(
    tmp_path: Path, server: RunningServer
) -> None:
    empty = write_lines(tmp_path / "0-empty.jsonl", [])
    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(300)])
    inputs = [str(empty), str(path)]
    report = await run_engine(tmp_path, server.url, "not-the-key", inputs, batch_size=100)
    assert report["exit_code"] == 3  # the empty file was read, a.jsonl refused
    assert report["warnings"] == [f"{empty}: empty file: no records"]
    report = await run_engine(tmp_path, server.url, server.secret_key, inputs, batch_size=150)
    assert report["exit_code"] == 0 and report["records_accepted"] == 300
    assert report["warnings"] == [
        f"{empty}: empty file: no records",
        "settings changed since the last leg (batch_size): acknowledged records stay as they "
        "were sent; the rest follows the new settings",
    ]
    report = await run_engine(tmp_path, server.url, server.secret_key, inputs, batch_size=150)
    assert len(report["warnings"]) == 2  # each warning once, however many legs said it


async def test_a_file_gone_between_legs_is_named_as_never_loaded(
    tmp_path: Path, server: RunningServer
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    whole = write_lines(logs / "1.jsonl", [line(interaction(i)) for i in range(50)])
    bad = [b'{"sku": %d}' % i for i in range(300)]
    part = write_lines(logs / "2.jsonl", [line(interaction(50 + i)) for i in range(40)] + bad)
    run = dict(batch_size=50, invalid_ratio_window=200)
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(logs)], **run)
    # 50 + 190 lines read when the ratio stops the leg: 1.jsonl whole, 2.jsonl in part
    assert report["exit_code"] == 3 and report["records_read"] == 240
    whole.unlink()
    part.unlink()
    write_lines(logs / "3.jsonl", [line(interaction(100 + i)) for i in range(20)])
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(logs)], **run)
    assert report["exit_code"] == 0 and report["records_accepted"] == 110
    assert report["files_never_loaded"] == [str(part.resolve())]
    assert report["warnings"] == [
        f"{part.resolve()}: gone from the inputs since an earlier leg; 190 lines loaded, "
        "the rest never loaded"
    ]


async def test_changing_the_endpoint_between_legs_warns(
    tmp_path: Path, server: RunningServer
) -> None:
    """Another environment is another load: what the first one acknowledged is not sent to
    the second, and the user is told so."""
    first = write_lines(tmp_path / "1.jsonl", [line(interaction(i)) for i in range(200)])
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(tmp_path / "*")])
    assert report["exit_code"] == 0 and report["warnings"] == []
    second = write_lines(tmp_path / "2.jsonl", [line(interaction(200 + i)) for i in range(50)])
    other = await start_server(ServerConfig(port=0, store="memory", secret_key="other-key"))
    try:
        report = await run_engine(tmp_path, other.url, "other-key", [str(tmp_path / "*")])
        assert report["exit_code"] == 0
        assert report["warnings"] == [
            f"the endpoint changed since the last leg ({server.url} -> {other.url}): what "
            "earlier legs acknowledged went to the old one and is not sent to the new one; "
            "load another environment with its own --state-dir"
        ]
        assert sorted(other.records("interactions")) == sorted(second.read_bytes().splitlines())
    finally:
        await other.close()
    assert sorted(server.records("interactions")) == sorted(first.read_bytes().splitlines())


async def test_resume_messages_agree_in_number(tmp_path: Path, server: RunningServer) -> None:
    import io
    import sqlite3

    from backfill.config import Secret, Settings
    from backfill.engine import Engine

    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(250)])
    await run_engine(tmp_path, server.url, server.secret_key, [str(path)], batch_size=100)
    db = sqlite3.connect(tmp_path / "state" / "checkpoint.sqlite")
    with db:  # the state a kill -9 leaves with the last batch (50 records) in flight
        db.execute("UPDATE batches SET state = 'inflight' WHERE start_line = 200")
        db.execute("UPDATE legs SET exit_code = NULL")
    db.close()
    settings = Settings(
        inputs=[str(path)], endpoint=server.url, state_dir=str(tmp_path / "state"),
        batch_size=100, progress="off",
    )  # fmt: skip
    out = io.StringIO()
    report = await Engine(settings, Secret(server.secret_key), out=out).run()
    err = out.getvalue()
    assert "resuming: 0 of 1 file done, 1 partly done" in err
    assert (
        "resuming: 1 batch (50 records) was in flight at the last stop and is ambiguous; "
        "re-sending it (--ambiguous)" in err
    )
    assert report["possibly_duplicated"] == 50 and report["records_accepted"] == 250


async def test_a_batch_counts_as_acknowledged_only_once_its_dead_letters_are_on_disk(
    tmp_path: Path, server: RunningServer
) -> None:
    """A dead-letter file that cannot be fsynced (a FIFO: EINVAL) stops the run before the
    batch of invalid lines it holds is marked acknowledged: a resume reads them again."""
    import os

    fifo = tmp_path / "dead-letter.fifo"
    os.mkfifo(fifo)
    rows = [b"{broken %d" % i for i in range(5)] + [line(interaction(i)) for i in range(100)]
    path = write_lines(tmp_path / "a.jsonl", rows)
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], batch_size=5,
        dead_letter=str(fifo), max_invalid_ratio=1.0,
    )  # fmt: skip
    assert report["exit_code"] == 3
    assert f"cannot write the dead-letter file {fifo} (Invalid argument)" in report["error"]
    assert report["records_read"] == report["records_invalid"] == 0  # nothing acknowledged
    assert report["batches_acknowledged"] == 0


async def test_dry_runs_store_nothing(tmp_path: Path, server: RunningServer) -> None:
    path = write_lines(tmp_path / "a.jsonl", [line(interaction(i)) for i in range(1_500)])
    report = await run_engine(tmp_path / "d", server.url, "", [str(path)], dry_run=True)
    assert report["records_accepted"] == 1_500
    assert (await server.stats())["requests"]["total"] == 0
    report = await run_engine(
        tmp_path / "s", server.url, server.secret_key, [str(path)], server_dry_run=True
    )
    assert report["records_accepted"] == 1_500
    stats = await server.stats()
    assert stats["requests"]["total"] == 1 and stats["interactions"]["total"] == 0


async def test_time_window_filters_without_dead_letters(
    tmp_path: Path, server: RunningServer
) -> None:
    from datetime import datetime

    recs = [interaction(i) for i in range(48)]
    for i, r in enumerate(recs):
        r["timestamp"] = f"2026-06-{1 + i // 24:02d}T{i % 24:02d}:00:00Z"
    path = write_lines(tmp_path / "a.jsonl", [line(r) for r in recs])
    report = await run_engine(
        tmp_path,
        server.url,
        server.secret_key,
        [str(path)],
        since=datetime.fromisoformat("2026-06-01T12:00:00+00:00"),
        until=datetime.fromisoformat("2026-06-02T06:00:00+00:00"),
    )
    assert numbers(server.records("interactions")) == list(range(12, 30))
    assert report["records_filtered"] == 30 and report["records_invalid"] == 0


async def test_the_key_is_never_written(tmp_path: Path, server: RunningServer, capsys) -> None:  # type: ignore[no-untyped-def]
    key = server.secret_key
    path = write_lines(
        tmp_path / "a.jsonl", [line(interaction(i)) for i in range(500)] + [b"{broken"]
    )
    server.set_faults(Faults(fail_first=2, fail_status=500, drop_rate=0.2, seed=3))
    report_file = tmp_path / "report.json"
    from backfill.progress import write_report

    report = await run_engine(
        tmp_path,
        server.url,
        key,
        [str(path)],
        batch_size=100,
        key_in_query=True,
        progress="log",
        progress_interval=0.01,
    )
    write_report(str(report_file), report)
    out = capsys.readouterr()
    assert key not in out.out + out.err + repr(report)
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    assert Counter(numbers(server.records("interactions"))) == Counter(range(500))


async def test_dead_letters_of_a_batch_caught_by_a_crash_are_not_written_twice(
    tmp_path: Path, server: RunningServer
) -> None:
    """kill -9 between a batch's dead-letter write and its in-flight mark leaves entries for
    lines the checkpoint does not hold; the resume reads them again and must not repeat them."""
    import sqlite3

    rows = [line(interaction(i)) for i in range(300)]
    path = write_lines(tmp_path / "a.jsonl", [*rows[:100], b"{broken", *rows[100:]])
    await run_engine(tmp_path, server.url, server.secret_key, [str(path)], batch_size=100)
    dead = tmp_path / "state" / "dead-letter.jsonl"
    assert [e["line"] for e in dead_letters(dead)] == [101]
    # the state such a crash leaves: the entry is written, the batch and the leg's end are not
    db = sqlite3.connect(tmp_path / "state" / "checkpoint.sqlite")
    with db:
        db.execute("DELETE FROM batches WHERE start_line <= 100 AND end_line > 100")
        db.execute("UPDATE legs SET exit_code = NULL")
    db.close()
    await server.reset()
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)], batch_size=100)
    assert [e["line"] for e in dead_letters(dead)] == [101]
    assert len(server.records("interactions")) == 100  # only the lost range, again
    assert report["records_invalid"] == 1 and report["records_accepted"] == 300
