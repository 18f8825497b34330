"""The live progress line, rendered from a known state of the counters."""

from __future__ import annotations

import io

from backfill.progress import LegStats, Progress, render_report


def test_the_share_and_eta_follow_acknowledged_records_not_reading() -> None:
    """A slow API: the reader is 57% through the input, the API has answered nothing."""
    stats = LegStats(bytes_total=1_000_000, records_read=57_000, started=100.0)
    progress = Progress(stats, "log", 10.0, io.StringIO())
    stats.bytes_done = 570_000
    text = progress.line(now=110.0)
    assert text.startswith("  0.0% acknowledged (57.0% read) | 0 accepted |")
    assert "ETA --:--" in text

    stats.records_accepted = 28_500  # half of what was read is acknowledged
    text = progress.line(now=110.0)
    assert text.startswith(" 28.5% acknowledged (57.0% read) | 28,500 accepted |")
    assert "ETA 0:25" in text  # 715,000 bytes left at 28,500 bytes/s


def test_invalid_and_filtered_records_need_no_answer() -> None:
    stats = LegStats(
        bytes_total=1_000,
        records_read=100,
        records_invalid=30,
        records_filtered=20,
        records_accepted=40,
        records_rejected=10,
        started=0.0,
    )
    progress = Progress(stats, "log", 10.0, io.StringIO())
    stats.bytes_done = 1_000
    assert progress.line(now=5.0).startswith("100.0% acknowledged (100.0% read) | 40 accepted")


def test_a_resumed_leg_counts_what_earlier_legs_did() -> None:
    stats = LegStats(bytes_total=1_000, bytes_done=400, started=0.0)
    progress = Progress(stats, "log", 10.0, io.StringIO())  # 400 bytes done before this leg
    stats.bytes_done, stats.records_read, stats.records_accepted = 700, 30, 10
    text = progress.line(now=10.0)
    assert text.startswith(" 50.0% acknowledged (70.0% read)") and "ETA 0:50" in text


def test_the_report_shows_only_rows_that_apply_and_the_privacy_counts() -> None:
    report = {
        "status": "completed",
        "exit_code": 0,
        "kind": "interactions",
        "records_read": 3,
        "dead_letter": "dl.jsonl",
        "privacy": {"ids_hashed": 1234, "ips_truncated": 2, "pii_findings": {"email@x": 1}},
    }
    text = render_report(report)
    assert "superseded by a newer version" not in text
    assert "privacy: ids hashed" in text and "1,234" in text
    assert "privacy: ips truncated" in text and "email@x" not in text
    assert "superseded by a newer version" in render_report({**report, "kind": "products"})
