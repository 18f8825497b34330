"""The [privacy] table in real runs: `backfill run` and `backfill delete` as subprocesses against
the embedded server; what the server stored is checked, never what we meant to send."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from backfill.server import RunningServer
from tests.helpers import dead_letters, write_lines
from tests.test_privacy import prefilter_path  # noqa: F401  (each test, each pre-filter)

KEY = "e2e-hash-key-9f8e7d6c5b4a39281706"
ALL_ON = """
[privacy]
hash_ids = ["user_id", "anonymous_id"]
truncate_ip = true
pii = "{pii}"
"""
EMAIL = re.compile(rb"[A-Za-z0-9._%+\-]+(?:@|%40)[A-Za-z0-9\-]+\.[A-Za-z]{2,}")
PHONE = "+1 415 555 2671"
CARD = "4111 1111 1111 1111"


def pseudonym(value: str, key: str = KEY) -> str:
    """HMAC-SHA256, lower-case hex: computed here, independently of backfill.privacy."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def events() -> list[dict[str, Any]]:
    """Six interactions of three users (e-mail addresses as ids), PII in free text."""
    users = ["ana@example.com", "bob@example.org", "carla.m@example.net"]
    out: list[dict[str, Any]] = []
    for i in range(6):
        rec: dict[str, Any] = {
            "type": "search",
            "user_id": users[i % 3],
            "anonymous_id": f"visitor-{i % 2}",
            "timestamp": f"2026-06-01T12:00:0{i}Z",
            "search": {"keywords": f"shoes size {i}"},
            "context": {"truncated_ip": f"203.0.113.{10 + i}", "custom_context": {"n": i}},
        }
        if i == 1:
            rec["search"]["keywords"] = f"call me {PHONE}"
        if i == 2:
            rec["context"]["custom_context"]["note"] = f"card {CARD} thanks"
        if i == 3:
            rec["context"]["page"] = {"url": "https://shop.example/?contact=dan%40example.com"}
        out.append(rec)
    return out


def jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    return write_lines(path, [json.dumps(r).encode() for r in records])


def config(tmp_path: Path, pii: str = "redact", extra: str = "") -> Path:
    path = tmp_path / "privacy.toml"
    path.write_text(ALL_ON.format(pii=pii) + extra)
    return path


async def cli(
    server: RunningServer, *args: str, hash_key: str | None = KEY
) -> tuple[int, str, str]:
    """`python -m backfill ARGS --endpoint URL` with the API key and (if any) the hash key."""
    env = {k: v for k, v in os.environ.items() if k != "MISO_HASH_KEY"}
    env["MISO_API_KEY"] = server.secret_key
    if hash_key is not None:
        env["MISO_HASH_KEY"] = hash_key
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", *args, "--endpoint", server.url,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


def stored(server: RunningServer, kind: Any) -> list[dict[str, Any]]:
    return [json.loads(r) for r in server.records(kind)]


async def load(
    server: RunningServer, tmp_path: Path, *inputs: Path, pii: str = "redact", kind: str = ""
) -> tuple[int, str, str, dict[str, Any]]:
    report = tmp_path / f"report-{kind or 'interactions'}.json"
    code, out, err = await cli(
        server, "run", *map(str, inputs), "--config", str(config(tmp_path, pii)),
        "--state-dir", str(tmp_path / f"state-{kind}"), "--report", str(report),
        "--progress", "off", *(["--kind", kind] if kind else []),
    )  # fmt: skip
    return code, out, err, json.loads(report.read_text()) if report.exists() else {}


async def test_every_stored_id_is_the_hmac_of_the_original_and_ips_are_truncated(
    tmp_path: Path, server: RunningServer
) -> None:
    originals = events()
    code, _, err, report = await load(server, tmp_path, jsonl(tmp_path / "e.jsonl", originals))
    assert code == 0, err
    got = sorted(stored(server, "interactions"), key=lambda r: r["timestamp"])
    assert len(got) == 6
    for before, after in zip(originals, got, strict=True):
        assert after["user_id"] == pseudonym(before["user_id"])
        assert after["anonymous_id"] == pseudonym(before["anonymous_id"])
        assert after["context"]["truncated_ip"] == "203.0.113.0"
    assert report["privacy"]["ids_hashed"] == 12
    assert report["privacy"]["ips_truncated"] == 6


async def test_users_and_interactions_hashed_with_the_same_key_join(
    tmp_path: Path, server: RunningServer
) -> None:
    users = [{"user_id": u, "city": "Taipei"} for u in ("ana@example.com", "bob@example.org")]
    code, _, err, report = await load(
        server, tmp_path, jsonl(tmp_path / "u.jsonl", users), kind="users"
    )
    assert code == 0, err
    assert report["privacy"]["ids_hashed"] == 2  # once: the catalog's prescan reads raw ids
    code, _, err, _ = await load(server, tmp_path, jsonl(tmp_path / "e.jsonl", events()))
    assert code == 0, err
    user_ids = {r["user_id"] for r in stored(server, "users")}
    assert user_ids == {pseudonym("ana@example.com"), pseudonym("bob@example.org")}
    acting = {r["user_id"] for r in stored(server, "interactions")}
    assert user_ids < acting  # every stored user has their events, under the same id
    assert pseudonym("carla.m@example.net") in acting


async def test_no_email_phone_or_card_number_survives_in_what_the_server_stored(
    tmp_path: Path, server: RunningServer
) -> None:
    code, _, err, report = await load(server, tmp_path, jsonl(tmp_path / "e.jsonl", events()))
    assert code == 0, err
    raw = b"\n".join(server.records("interactions"))
    assert EMAIL.findall(raw) == []
    digits = re.sub(rb"[^0-9\n]", b"", raw)
    assert b"14155552671" not in digits and b"4111111111111111" not in digits
    got = sorted(stored(server, "interactions"), key=lambda r: r["timestamp"])
    assert got[1]["search"]["keywords"] == "call me [phone]"
    assert got[2]["context"]["custom_context"]["note"] == "card [card] thanks"
    assert got[3]["context"]["page"]["url"] == "https://shop.example/?contact=[email]"
    assert got[0]["search"]["keywords"] == "shoes size 0"  # untouched
    assert report["privacy"]["pii_records_redacted"] == 3
    assert report["privacy"]["pii_findings"] == {
        "card@context.custom_context.note": 1,
        "email@context.page.url": 1,
        "phone@search.keywords": 1,
    }


async def test_dead_letter_mode_keeps_pii_records_out_and_never_repeats_the_pii(
    tmp_path: Path, server: RunningServer
) -> None:
    code, out, err, report = await load(
        server, tmp_path, jsonl(tmp_path / "e.jsonl", events()), pii="dead-letter"
    )
    assert code == 0, err
    assert sorted(r["context"]["custom_context"]["n"] for r in stored(server, "interactions")) == [
        0,
        4,
        5,
    ]
    letters = dead_letters(tmp_path / "state-" / "dead-letter.jsonl")
    assert [d["line"] for d in letters] == [2, 3, 4]
    assert "phone in search.keywords" in letters[0]["reason"]
    text = json.dumps(letters) + out + err
    assert "415 555" not in text and "4111 1111" not in text and "dan%40example" not in text
    assert "ana@example.com" not in text  # the ids in dead letters are hashed too
    assert report["privacy"]["pii_records_dead_lettered"] == 3


async def test_warn_mode_sends_as_it_was_and_says_so_once(
    tmp_path: Path, server: RunningServer
) -> None:
    code, out, err, report = await load(
        server, tmp_path, jsonl(tmp_path / "e.jsonl", events()), pii="warn"
    )
    assert code == 0, err
    got = sorted(stored(server, "interactions"), key=lambda r: r["timestamp"])
    assert got[1]["search"]["keywords"] == f"call me {PHONE}"
    warned = [x for x in (out + err).splitlines() if x.startswith("warning: [privacy]")]
    assert warned == [
        'warning: [privacy] pii = "warn": personal data found and sent as it was (1 card, '
        '1 email, 1 phone; by field in the report\'s "privacy"); set pii = "redact" to keep '
        "it from Miso"
    ]
    assert PHONE not in out + err
    assert report["privacy"]["pii_records_redacted"] == 0


async def test_delete_users_with_raw_ids_removes_the_hashed_users(
    tmp_path: Path, server: RunningServer
) -> None:
    users = [{"user_id": u} for u in ("ana@example.com", "bob@example.org", "eve@example.com")]
    code, _, err, _ = await load(server, tmp_path, jsonl(tmp_path / "u.jsonl", users), kind="users")
    assert code == 0, err
    ids = tmp_path / "forget.txt"
    ids.write_text("ana@example.com\neve@example.com\n")
    code, _, err = await cli(
        server, "delete", "users", "--ids", str(ids), "--config", str(config(tmp_path)),
        "--state-dir", str(tmp_path / "state-delete"), "--yes",
    )  # fmt: skip
    assert code == 0, err
    assert [r["user_id"] for r in stored(server, "users")] == [pseudonym("bob@example.org")]


async def test_delete_interactions_with_raw_ids_removes_the_hashed_users_events(
    tmp_path: Path, server: RunningServer
) -> None:
    code, _, err, _ = await load(server, tmp_path, jsonl(tmp_path / "e.jsonl", events()))
    assert code == 0, err
    ids = tmp_path / "forget.txt"
    ids.write_text("ana@example.com\n")
    code, _, err = await cli(
        server, "delete", "interactions", "--ids", str(ids), "--config", str(config(tmp_path)),
        "--state-dir", str(tmp_path / "state-delete"), "--yes",
    )  # fmt: skip
    assert code == 0, err
    left = {r["user_id"] for r in stored(server, "interactions")}
    assert left == {pseudonym("bob@example.org"), pseudonym("carla.m@example.net")}


async def test_delete_dry_run_lists_the_pseudonyms_never_the_raw_ids(
    tmp_path: Path, server: RunningServer
) -> None:
    users = [{"user_id": u} for u in ("ana@example.com", "eve@example.com")]
    code, _, err, _ = await load(server, tmp_path, jsonl(tmp_path / "u.jsonl", users), kind="users")
    assert code == 0, err
    ids = tmp_path / "forget.txt"
    # the third line is not an id (Miso's ids never start with "_"): said, never quoted
    ids.write_text("ana@example.com\neve@example.com\n_zed@example.com\n")
    args = ["delete", "users", "--ids", str(ids), "--config", str(config(tmp_path)), "--dry-run"]
    code, out, err = await cli(server, *args)
    assert code == 0, err
    assert out.split() == [pseudonym("ana@example.com"), pseudonym("eve@example.com")]
    assert "would delete 2 users" in err and "the raw ids are not printed" in err
    assert f"not an id: {ids} line 3: user_id: must not start with '_'\n" in err
    assert "@example.com" not in out + err
    assert len(server.records("users")) == 2  # a dry run deletes nothing
    code, out, err = await cli(server, *args, hash_key=None)
    assert code == 2 and "MISO_HASH_KEY" in err and out == ""


async def test_privacy_counts_say_they_cover_this_leg_only(
    tmp_path: Path, server: RunningServer
) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    code, _, err, report = await load(server, tmp_path, path)
    assert code == 0, err
    assert report["privacy"]["counts_cover"] == "this leg only (leg 1 of the load)"
    assert report["privacy"]["ids_hashed"] == 12
    code, _, err, report = await load(server, tmp_path, path)  # a second leg: nothing to read
    assert code == 0, err
    assert report["privacy"]["counts_cover"] == "this leg only (leg 2 of the load)"
    assert report["privacy"]["ids_hashed"] == 0


async def test_a_missing_hash_key_stores_nothing_and_exits_2(
    tmp_path: Path, server: RunningServer
) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    for hash_key in (None, "too-short"):
        code, _, err = await cli(
            server, "run", str(path), "--config", str(config(tmp_path)),
            "--state-dir", str(tmp_path / "state"), "--progress", "off", hash_key=hash_key,
        )  # fmt: skip
        assert code == 2, err
        assert "MISO_HASH_KEY" in err and "Traceback" not in err
    assert server.records("interactions") == []
    stats = await server.stats()
    assert stats["requests"]["total"] == 0 and stats["records_received"] == 0


async def test_an_unknown_pii_prefilter_stores_nothing_and_exits_2(
    tmp_path: Path, server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKFILL_PII_PREFILTER", "fastest")
    path = jsonl(tmp_path / "e.jsonl", events())
    code, _, err = await cli(
        server, "run", str(path), "--config", str(config(tmp_path)),
        "--state-dir", str(tmp_path / "state"), "--progress", "off",
    )  # fmt: skip
    assert code == 2, err
    assert "$BACKFILL_PII_PREFILTER is 'fastest': choose one of python, hyperscan" in err
    assert "Traceback" not in err
    assert (await server.stats())["records_received"] == 0


async def test_the_hash_key_appears_in_no_file_and_no_output(
    tmp_path: Path, server: RunningServer
) -> None:
    broken = json.dumps(events()[0])[:-9] + "\n"  # a dead letter, with a raw id in it
    path = jsonl(tmp_path / "e.jsonl", events())
    path.write_text(path.read_text() + broken)
    code, out, err, report = await load(server, tmp_path, path)
    assert code == 0, err
    # the broken line's two ids are hashed too: it goes to the dead-letter file
    assert report["records_invalid"] == 1 and report["privacy"]["ids_hashed"] == 14
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != path]
    assert len(written) >= 4  # checkpoint, dead letters, report, the config
    for p in written:
        assert KEY.encode() not in p.read_bytes(), p
    assert KEY not in out + err
    assert KEY not in json.dumps(report)
    letters = dead_letters(tmp_path / "state-" / "dead-letter.jsonl")
    assert len(letters) == 1 and pseudonym("ana@example.com") in letters[0]["record"]
    assert "ana@example.com" not in json.dumps(letters)


async def test_another_key_on_resume_is_a_changed_setting(
    tmp_path: Path, server: RunningServer
) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    code, _, err, _ = await load(server, tmp_path, path)
    assert code == 0, err
    code, out, err = await cli(
        server, "run", str(path), "--config", str(config(tmp_path)),
        "--state-dir", str(tmp_path / "state-"), "--progress", "off",
        hash_key="another-key-0123456789abcdef",
    )  # fmt: skip
    assert code == 0, err
    assert "settings changed since the last leg (privacy)" in out + err


async def test_a_key_written_in_the_privacy_table_is_refused(
    tmp_path: Path, server: RunningServer
) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    bad = config(tmp_path, extra=f'hash_key = "{KEY}"\n')
    code, out, err = await cli(server, "run", str(path), "--config", str(bad))
    assert code == 2
    assert "privacy.hash_key: no such setting" in err and "MISO_HASH_KEY" in err
    assert KEY not in out + err
    assert server.records("interactions") == []


async def preview_cli(*args: str, hash_key: str | None = KEY) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MISO_HASH_KEY"}
    if hash_key is not None:
        env["MISO_HASH_KEY"] = hash_key
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", "preview", *args, "--width", "200",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_preview_shows_what_the_privacy_step_changed(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    code, out, err = await preview_cli(str(path), "--config", str(config(tmp_path)), "-n", "2")
    assert code == 0, err
    assert "-> Miso interactions and the [privacy] step, first 2 records" in out
    assert f'user_id: "ana@example.com" -> "{pseudonym("ana@example.com")[:39]}…"' in out
    assert 'context.truncated_ip: "203.0.113.10" -> "203.0.113.0"' in out
    assert 'search.keywords: "call me +1 415 555 2671" -> "call me [phone]"' in out
    assert out.count("privacy:") == 2 and "2 records: 2 valid" in out


async def test_preview_gives_the_reason_of_a_privacy_dead_letter(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    settings = config(tmp_path, "dead-letter")
    code, out, err = await preview_cli(str(path), "--config", str(settings), "-n", "2")
    assert code == 1, err  # a record shown is not sent
    assert "line 2: dead letter" in out
    assert 'personal data (phone in search.keywords); [privacy] pii = "dead-letter"' in out


async def test_preview_of_mapped_csv_rows_hashes_the_mapped_ids(tmp_path: Path) -> None:
    mapping = Path(__file__).resolve().parent.parent / "configs" / "mapping-ecommerce-csv.toml"
    data = mapping.parent / "samples" / "ecommerce-events.csv"
    both = tmp_path / "both.toml"
    both.write_text(mapping.read_text() + '\n[privacy]\nhash_ids = ["user_id"]\n')
    code, out, err = await preview_cli(str(data), "--config", str(both), "-n", "1")
    assert code == 0, err
    assert f'user_id: "541312140" -> "{pseudonym("541312140")[:39]}…"' in out
    assert "user_id: 541312140" in out  # the CSV row, as read


async def test_preview_without_the_hash_key_exits_2(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "e.jsonl", events())
    code, out, err = await preview_cli(str(path), "--config", str(config(tmp_path)), hash_key=None)
    assert code == 2 and out == ""
    assert "MISO_HASH_KEY" in err and "Traceback" not in err
