"""The privacy step: hashed ids, truncated IPs, PII found and handled, on real blocks and files."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.errors import EXIT_USAGE, UsageError
from backfill.generate import GenerateConfig, generate
from backfill.ids import IdLines
from backfill.privacy import (
    HashKey,
    KeyRewriter,
    PrivacySettings,
    PrivacyTransform,
    build_privacy,
    candidate_offsets,
    find_pii,
    load_hash_key,
    luhn,
    maybe_pii,
    parse_privacy,
    redact_text,
    truncate_ip,
)
from backfill.privacy.detect import (
    _EXACT,
    PREFILTER_ENV,
    _classify,
    candidate_gate,
    prefilter,
)
from backfill.privacy.rewrite import REWRITE_ENV
from backfill.schema import RecordValidator, Rules
from backfill.sources import START, Block, LocalFile, Problem, open_blocks
from benchmarks.privacy import compare, compare_engine, compare_run, table
from tests.helpers import interaction, line

KEY = "test-hash-key-0123456789abcdef"
ALL_ON = PrivacySettings(hash_ids=["user_id", "anonymous_id"], truncate_ip=True, pii="redact")


# Every privacy test runs on each path: "python" (the Python pre-filter and id rewrite, what
# an install without a C compiler and without backfill[fast] runs) and "compiled" (the C
# rewrite and pre-filter built at install, hyperscan for what is left of the Python path).
PATHS: Final = {
    "python": {PREFILTER_ENV: "python", REWRITE_ENV: "python"},
    "compiled": {PREFILTER_ENV: "hyperscan", REWRITE_ENV: "compiled"},
}


@pytest.fixture(autouse=True, scope="module", params=list(PATHS))
def prefilter_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test of the module on each path (`PATHS`), through the environment, so that
    the `backfill` processes the tests start use it too."""
    name: str = request.param
    if name == "compiled":
        pytest.importorskip("hyperscan")
        if not _built():
            pytest.skip("the C extension was not built (no C compiler at install)")
    old = {var: os.environ.get(var) for var in PATHS[name]}
    os.environ.update(PATHS[name])
    yield name
    for var, value in old.items():
        if value is None:
            del os.environ[var]
        else:
            os.environ[var] = value


def _built() -> bool:
    try:
        from backfill.privacy import _splice  # noqa: F401
    except ImportError:
        return False
    return True


def expected(value: str, key: str = KEY) -> str:
    """The pseudonym, computed independently of backfill.privacy."""
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def transform(
    settings: PrivacySettings = ALL_ON, kind: Any = "interactions", operation: Any = "upload"
) -> PrivacyTransform:
    return PrivacyTransform(settings, HashKey(KEY), kind, operation)


def run(
    t: PrivacyTransform, lines: list[bytes], problems: dict[int, Problem] | None = None
) -> Block:
    block = Block(list(lines), 0, 0, sum(map(len, lines)) + len(lines), dict(problems or {}))
    t.apply(block)
    return block


# -- hashing ----------------------------------------------------------------------------


def test_hash_equals_an_independent_hmac_and_is_lower_hex() -> None:
    digest = HashKey(KEY).hash("ana@example.com")
    assert digest == expected("ana@example.com")
    assert digest == digest.lower() and len(digest) == 64
    assert HashKey("another-key-0123456789").hash("ana@example.com") != digest
    long_key = "k" * 100  # longer than SHA-256's block: HMAC hashes the key first
    assert HashKey(long_key).hash("ü") == expected("ü", long_key)
    assert HashKey("k" * 64).hash("") == expected("", "k" * 64)


def test_ids_are_hashed_for_interactions_in_every_json_spelling() -> None:
    records = [
        b'{"type":"search","user_id":"ana@example.com","timestamp":"2026-06-01T00:00:00Z"}',
        b'{"type": "search", "anonymous_id": "anon-1", "user_id" : "bob"}',
        b'{"type":"search","user_id":"caf\\u00e9@x.io","anonymous_id":"a\\"b"}',
        b'{"type":"search","user_id":"ends_id","context":{"custom_context":{"user_id":"x"}}}',
    ]
    block = run(transform(PrivacySettings(hash_ids=["user_id", "anonymous_id"])), records)
    decoded = [json.loads(x) for x in block.lines]
    assert decoded[0]["user_id"] == expected("ana@example.com")
    assert decoded[0]["timestamp"] == "2026-06-01T00:00:00Z"
    assert decoded[1] == {
        "type": "search",
        "anonymous_id": expected("anon-1"),
        "user_id": expected("bob"),
    }
    assert decoded[2]["user_id"] == expected("café@x.io")
    assert decoded[2]["anonymous_id"] == expected('a"b')
    assert decoded[3]["user_id"] == expected("ends_id")
    # the contract's fields are top-level; custom_context is free data, for the PII scan
    assert decoded[3]["context"]["custom_context"]["user_id"] == "x"
    assert block.raw_lengths == [len(r) for r in records]


def test_text_that_looks_like_a_key_inside_a_string_is_left_alone() -> None:
    record = b'{"type":"search","search":{"keywords":"\\"user_id\\":\\"raw\\""},"user_id":"u"}'
    tricky = b'{"type":"search","tags":["user_id"],"user_id":null,"anonymous_id":""}'
    block = run(transform(PrivacySettings(hash_ids=["user_id", "anonymous_id"])), [record, tricky])
    assert json.loads(block.lines[0])["search"]["keywords"] == '"user_id":"raw"'
    assert json.loads(block.lines[0])["user_id"] == expected("u")
    assert block.lines[1] == tricky  # no string id to hash; an empty id stays empty


def test_key_rewriter_keeps_spacing_escapes_and_broken_lines() -> None:
    def upper(raw: bytes) -> bytes:
        return raw.upper()

    plain = b'{"user_id":"a","x":"user_id"}\n{"user_id":"b"}\n{"user_id": "c"}'
    escaped = plain + b'\n{"user_id":"d\\u0041"}'  # the raw value (escapes and all)
    broken = b'{"user_id":"e\n{"user_id":"f"}'  # an unterminated value must not eat a line
    rewrite = KeyRewriter(["user_id"], upper)
    assert rewrite(b'{"user_id":"a"}\n{"user_id":"b"}') == (b'{"user_id":"A"}\n{"user_id":"B"}', 2)
    expected_plain = b'{"user_id":"A","x":"user_id"}\n{"user_id":"B"}\n{"user_id": "C"}'
    assert rewrite(plain) == (expected_plain, 3)
    assert rewrite(escaped) == (expected_plain + b'\n{"user_id":"D\\U0041"}', 4)
    assert rewrite(broken) == (b'{"user_id":"e\n{"user_id":"F"}', 1)


def test_users_hash_user_id_and_products_are_untouched() -> None:
    user = b'{"user_id":"ana@example.com","name":"Ana"}'
    assert json.loads(run(transform(kind="users"), [user]).lines[0])["user_id"] == expected(
        "ana@example.com"
    )
    product = b'{"product_id":"p-1","title":"Shoe"}'
    assert run(transform(kind="products"), [product]).lines == [product]


def test_users_and_interactions_hashed_with_the_same_key_join() -> None:
    user = run(transform(kind="users"), [b'{"user_id":"u-42"}']).lines[0]
    event = run(transform(), [line(interaction(1, user="u-42"))]).lines[0]
    assert json.loads(user)["user_id"] == json.loads(event)["user_id"] == expected("u-42")


def test_delete_ids_are_hashed_so_they_hit_the_hashed_records(tmp_path: Path) -> None:
    ids = tmp_path / "forget.txt"
    ids.write_bytes(b'ana@example.com\n{"user_id": "bob"}\n\n')
    for kind in ("users", "interactions"):
        t = build_privacy(ALL_ON, kind, "delete", {"MISO_HASH_KEY": KEY})
        assert t is not None

        async def collect(t: PrivacyTransform = t, kind: Any = kind) -> list[bytes]:
            blocks = open_blocks(LocalFile.at(ids), START, [IdLines(kind), t])
            async with contextlib.aclosing(blocks):
                return [x async for b in blocks for x in b.lines]

        lines = asyncio.run(collect())
        assert lines == [
            f'"{expected("ana@example.com")}"'.encode(),
            f'"{expected("bob")}"'.encode(),
            b"",
        ]
    assert build_privacy(ALL_ON, "products", "delete", {"MISO_HASH_KEY": KEY}) is None


# -- the key ------------------------------------------------------------------------------


def test_missing_key_is_a_usage_error_naming_the_variable() -> None:
    with pytest.raises(UsageError) as caught:
        load_hash_key(PrivacySettings(hash_ids=["user_id"]), {})
    assert caught.value.exit_code == EXIT_USAGE
    assert "MISO_HASH_KEY" in str(caught.value)
    with pytest.raises(UsageError, match="PSEUDO_KEY"):
        build_privacy(PrivacySettings(hash_ids=["user_id"], hash_key_env="PSEUDO_KEY"), "users")
    assert load_hash_key(PrivacySettings(truncate_ip=True), {}) is None  # nothing to hash


def test_key_file_missing_or_empty_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hash.key"
    settings = PrivacySettings(hash_ids=["user_id"], hash_key_file=str(path))
    with pytest.raises(UsageError, match=r"hash\.key"):
        load_hash_key(settings, {"MISO_HASH_KEY": KEY})
    path.write_text("\n")
    with pytest.raises(UsageError, match=r"hash\.key"):
        load_hash_key(settings, {})
    path.write_text(KEY + "\n")
    key = load_hash_key(settings, {})
    assert key is not None and key.hash("x") == expected("x")


def test_the_key_appears_in_no_repr_or_error() -> None:
    key = load_hash_key(PrivacySettings(hash_ids=["user_id"]), {"MISO_HASH_KEY": KEY})
    assert key is not None
    t = PrivacyTransform(ALL_ON, key, "interactions")
    for text in (repr(key), str(key), repr(t), repr(t.counts), str(t.counts.report())):
        assert KEY not in text
    short = "tooshort"
    with pytest.raises(UsageError) as caught:
        load_hash_key(PrivacySettings(hash_ids=["user_id"]), {"MISO_HASH_KEY": short})
    assert short not in str(caught.value) and "at least 16" in str(caught.value)
    assert key.fingerprint() == HashKey(KEY).fingerprint() != HashKey(KEY + "x").fingerprint()
    assert KEY not in key.fingerprint() and len(key.fingerprint()) == 16


def test_the_table_is_closed() -> None:
    with pytest.raises(UsageError, match=r"privacy\.hash_key"):
        parse_privacy({"hash_key": KEY}, "run.toml")
    with pytest.raises(UsageError, match=r"privacy\.pii"):
        parse_privacy({"pii": "scrub"})
    with pytest.raises(UsageError, match=r"privacy\.hash_ids"):
        parse_privacy({"hash_ids": ["product_id"]})
    assert parse_privacy({"pii": "dead-letter", "truncate_ip": True}).pii == "dead-letter"


# -- IPs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("203.0.113.0", "203.0.113.0"),
        ("2001:db8:85a3:1234:5678::1", "2001:db8:85a3::"),
        ("2001:0db8:0001:ffff:ffff:ffff:ffff:ffff", "2001:db8:1::"),
        ("::ffff:198.51.100.23", "198.51.100.0"),
        ("fe80::1%eth0", "fe80::"),
        ("999.1.1.1", "999.1.1.1"),
        ("01.2.3.4", "01.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4:8080"),
        ("localhost", "localhost"),
    ],
)
def test_truncate_ip(given: str, kept: str) -> None:
    assert truncate_ip(given) == kept


def test_truncated_ip_in_records_and_an_invalid_one_left_to_the_validator() -> None:
    good = line({**interaction(1), "context": {"truncated_ip": "198.51.100.23"}})
    bad = line({**interaction(2), "context": {"truncated_ip": "not-an-ip"}})
    spaced = b'{"type": "search", "context": {"truncated_ip": "10.0.0.7"}}'
    escaped = b'{"type":"search","context":{"truncated_ip":"10.0.1\\u002e7"}}'
    t = transform(PrivacySettings(truncate_ip=True))
    block = run(t, [good, bad, spaced, escaped])
    assert json.loads(block.lines[0])["context"]["truncated_ip"] == "198.51.100.0"
    assert block.lines[1] == bad
    assert json.loads(block.lines[2]) == {"type": "search", "context": {"truncated_ip": "10.0.0.0"}}
    assert block.lines[2].startswith(b'{"type": "search", "context": {"truncated_ip":')  # in place
    assert json.loads(block.lines[3])["context"]["truncated_ip"] == "10.0.1.0"
    block.lines[2:] = []
    check = RecordValidator("interactions", Rules()).check
    assert check(block.lines[0]) is None
    assert "truncated_ip" in (check(block.lines[1]) or "")
    assert t.counts.ips_truncated == 3


def test_an_address_ending_in_dot_zero_is_skipped_only_when_it_is_ipv4() -> None:
    mapped = line({**interaction(1), "context": {"truncated_ip": "::ffff:198.51.100.0"}})
    done = line({**interaction(2), "context": {"truncated_ip": "198.51.100.0"}})
    t = transform(PrivacySettings(truncate_ip=True))
    block = run(t, [mapped, done])
    assert json.loads(block.lines[0])["context"]["truncated_ip"] == "198.51.100.0"
    assert block.lines[1] == done
    assert t.counts.ips_truncated == 1


# -- PII detection ----------------------------------------------------------------------------

FOUND = [
    ("write to ana.b+shop@example.co.uk", ["email"]),
    ("https://shop.example.com/s?q=ana%40example.com&x=1", ["email"]),
    ("call +1 415 555 2671 now", ["phone"]),
    ("(415) 555-2671", ["phone"]),
    ("415.555.2671", ["phone"]),
    ("+44 20 7946 0958", ["phone"]),
    ("+4915112345678", ["phone"]),
    ("+33 1 23 45 67 89", ["phone"]),
    ("020 7946 0958", ["phone"]),
    ("https://s.example.com/search?q=%2B1%20415%20555%202671", ["phone"]),
    ("q=415+555+2671", ["phone"]),
    ("4111 1111 1111 1111", ["card"]),
    ("card=4111-1111-1111-1111&exp=12", ["card"]),
    ("5555555555554444", ["card"]),
    ("3782 822463 10005", ["card"]),
    ("ana@example.com or 415-555-2671", ["email", "phone"]),
]
NOT_FOUND = [
    "SKU-4111111111111112",  # fails Luhn
    "SKU-4111111111111111",  # passes Luhn but is glued to a product code
    "4111111111111112",
    "/p/4111111111111111",  # a path segment: an id
    "0000000000000000",
    "1780000000000123",  # epoch-like: no issuer starts with 1
    "2026-06-01T12:34:56.073Z",
    "2026-06-01 12:34:56",
    "174.132.239.0",
    "123e4567-e89b-12d3-a456-426614174000",
    "anon-3063aac296ffd4cf",
    "price 1299.99, 12.50 off",
    "order 10000000000001",
    "@miso on social",
    "a@b",
    "iphone 15 pro 256 gb",
]


@pytest.mark.parametrize(("text", "kinds"), FOUND)
def test_pii_found(text: str, kinds: list[str]) -> None:
    assert find_pii(text) == kinds
    assert candidate_offsets(json.dumps({"v": text}).encode())
    redacted, replaced = redact_text(text)
    assert replaced == kinds
    assert all(f"[{kind}]" in redacted for kind in kinds)


@pytest.mark.parametrize("text", NOT_FOUND)
def test_no_pii_in_ids_timestamps_and_prices(text: str) -> None:
    assert find_pii(text) == []


def test_luhn() -> None:
    assert luhn("4111111111111111") and luhn("79927398713")
    assert not luhn("4111111111111112") and not luhn("79927398710")


def test_escaped_json_strings_are_decoded_before_the_scan() -> None:
    record = b'{"type":"search","search":{"keywords":"ana\\u0040example.com"},"user_id":"u"}'
    t = transform(PrivacySettings(pii="redact"))
    block = run(t, [record])
    assert json.loads(block.lines[0])["search"]["keywords"] == "[email]"
    assert t.counts.findings == {"email@search.keywords": 1}


_PII_ALPHABET = st.sampled_from([*"0123456789 -.+()@%abcxyz_/:=", "%20", "%40", "%2B"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PII_ALPHABET, max_size=40).map("".join))
def test_prefilter_is_a_superset_of_the_exact_scan(text: str) -> None:
    """A record with PII must never skip the scan: every exact finding is a candidate."""
    if find_pii(text):
        assert candidate_offsets(json.dumps({"v": text}).encode())
        assert maybe_pii(text)  # the same pre-filter, per decoded string in the scan


@pytest.mark.parametrize(("text", "kinds"), FOUND)
def test_the_per_string_prefilter_lets_every_finding_through(text: str, kinds: list[str]) -> None:
    assert maybe_pii(text)
    assert not maybe_pii("shoes size 42")


@settings(max_examples=400, deadline=None)
@given(st.lists(_PII_ALPHABET, max_size=40).map("".join))
def test_each_string_is_searched_with_the_alternatives_that_can_match_it(text: str) -> None:
    """find_pii and redact_text search with a subset of the patterns, chosen by what the
    string holds: they find exactly what the whole pattern finds."""
    whole = [kind for m in _EXACT.finditer(text) if (kind := _classify(m)) is not None]
    assert find_pii(text) == whole
    assert redact_text(text)[1] == whole


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_PII_ALPHABET, max_size=30).map("".join), min_size=1, max_size=4))
def test_the_line_gate_lets_every_string_maybe_pii_would_through(texts: list[str]) -> None:
    """A flagged line's strings are gated by the line's own marks instead of maybe_pii:
    every string maybe_pii lets through (so every finding) must pass the line's gate."""
    record = {"a": texts[0], "b": {"c": texts[1:], "n": 4155552671}, "k": "2026-06-01T00:01"}
    gate = candidate_gate(json.dumps(record, ensure_ascii=False).encode())
    assert gate is not None
    for text in texts:
        if maybe_pii(text):
            assert gate(text), text
    assert candidate_gate(b'{"a":"ana\\u0040example.com"}') is None  # strings are not bytes


_LINE_ALPHABET = st.sampled_from([*'0123456789 -.+()@%ab_/\\u"\n', "%20", "%40", "%2B", "\\u00"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_LINE_ALPHABET, max_size=60).map("".join))
def test_both_prefilters_find_the_same_lines(text: str) -> None:
    """hyperscan's offsets are a mark's last byte, Python's its first: the same lines."""
    pytest.importorskip("hyperscan")
    data = text.encode()

    def lines_of(offsets: list[int]) -> set[int]:
        return {data.count(b"\n", 0, pos) for pos in offsets}

    assert lines_of(prefilter("hyperscan")(data)) == lines_of(candidate_offsets(data))


def test_an_unknown_prefilter_is_a_usage_error() -> None:
    assert prefilter("python") is candidate_offsets
    with pytest.raises(UsageError, match=r"BACKFILL_PII_PREFILTER is 'fast': choose one of python"):
        prefilter("fast")


def test_clean_generated_records_are_not_candidates() -> None:
    lines = [line(interaction(i)) for i in range(500)]
    assert candidate_offsets(b"\n".join(lines)) == []


# -- modes ----------------------------------------------------------------------------------


def pii_records() -> list[bytes]:
    return [
        line({**interaction(8), "search": {"keywords": "ana@example.com"}}),
        line(interaction(1)),
        line(
            {
                **interaction(2),
                "context": {
                    "page": {"url": "https://s.example.com/?q=ana%40example.com", "title": "Hi"},
                    "custom_context": {"phone": "+44 20 7946 0958", "n": 415_555_2671},
                },
            }
        ),
        line({**interaction(3), "context": {"custom_context": {"notes": ["4111 1111 1111 1111"]}}}),
        line({**interaction(4), "context": {"custom_context": {"sku": "SKU-4111111111111112"}}}),
    ]


FINDINGS = {
    "email@search.keywords": 1,
    "email@context.page.url": 1,
    "phone@context.custom_context.phone": 1,
    "card@context.custom_context.notes[]": 1,
}


def test_redact_replaces_pii_and_counts_by_kind_and_field() -> None:
    records = pii_records()
    t = transform(PrivacySettings(pii="redact"))
    block = run(t, records)
    out = [json.loads(x) for x in block.lines]
    assert out[0]["search"]["keywords"] == "[email]"
    assert out[1] == json.loads(records[1])
    assert out[2]["context"]["page"] == {"url": "https://s.example.com/?q=[email]", "title": "Hi"}
    assert out[2]["context"]["custom_context"] == {"phone": "[phone]", "n": 4155552671}
    assert out[3]["context"]["custom_context"]["notes"] == ["[card]"]
    assert block.lines[4] == records[4]
    assert dict(t.counts.findings) == FINDINGS
    assert t.counts.records_redacted == 3 and t.counts.records_dead_lettered == 0
    assert block.problems == {}
    assert block.raw_lengths == [len(r) for r in records]
    check = RecordValidator("interactions", Rules()).check
    assert [check(x) for x in block.lines] == [None] * 5


def test_dead_letter_mode_never_repeats_the_pii() -> None:
    records = pii_records()
    t = transform(PrivacySettings(pii="dead-letter"))
    block = run(t, records)
    assert sorted(block.problems) == [0, 2, 3]
    assert [block.lines[i] for i in (0, 2, 3)] == [b"", b"", b""]
    assert block.lines[1] == records[1] and block.lines[4] == records[4]
    p = block.problems[2]
    assert p.reason == (
        "personal data (email in context.page.url, phone in context.custom_context.phone); "
        '[privacy] pii = "dead-letter" keeps it from Miso'
    )
    assert p.length == len(records[2])
    for problem in block.problems.values():
        text = (problem.reason or "") + problem.raw.decode()
        for secret in ("ana@example.com", "ana%40example.com", "7946", "4111"):
            assert secret not in text
    assert dict(t.counts.findings) == FINDINGS
    assert t.counts.records_dead_lettered == 3
    assert block.end_offset(5) == sum(map(len, records)) + 5


def test_warn_mode_counts_and_changes_nothing() -> None:
    records = pii_records()
    t = transform(PrivacySettings(pii="warn"))
    block = run(t, records)
    assert block.lines == records and block.problems == {}
    assert dict(t.counts.findings) == FINDINGS
    assert t.counts.report()["pii_findings"] == dict(sorted(FINDINGS.items()))


def test_pii_in_an_id_is_a_dead_letter_asking_for_hash_ids() -> None:
    record = line(interaction(0, user="ana@example.com"))
    t = transform(PrivacySettings(pii="redact"))
    block = run(t, [record])
    assert block.lines == [b""]
    reason = block.problems[0].reason or ""
    assert "email in user_id" in reason and "hash_ids" in reason
    assert b"ana@example.com" not in block.problems[0].raw
    # hashed first, the same record goes through clean
    t = transform(PrivacySettings(hash_ids=["user_id"], pii="redact"))
    block = run(t, [record])
    assert json.loads(block.lines[0])["user_id"] == expected("ana@example.com")
    assert block.problems == {} and t.counts.findings == {}


def test_lines_refused_upstream_are_scrubbed_before_their_dead_letter() -> None:
    broken = b'{"type":"search","user_id":"u1","search":{"keywords":"ana@example.com"'
    problems = {0: Problem("malformed JSON", len(broken), broken)}
    block = run(transform(), [b""], problems)
    raw = block.problems[0].raw
    assert b"ana@example.com" not in raw and b"[email]" in raw
    assert expected("u1").encode() in raw
    assert block.problems[0].reason == "malformed JSON"


def test_malformed_candidate_line_is_redacted_for_the_validator_to_dead_letter() -> None:
    broken = b'{"type":"search","search":{"keywords":"call 415-555-2671"},}'
    t = transform(PrivacySettings(pii="redact"))
    block = run(t, [broken])
    assert block.lines[0] == b'{"type":"search","search":{"keywords":"call [phone]"},}'
    assert t.counts.findings == {"phone@(malformed line)": 1}


# -- end to end on a real file --------------------------------------------------------------------


def test_a_real_gzip_file_through_open_blocks_and_the_transform(tmp_path: Path) -> None:
    records = [interaction(i, user=f"user{i % 7}@example.com") for i in range(3000)]
    for i in range(0, 3000, 100):
        records[i]["context"] = {"truncated_ip": f"10.1.{i % 250}.{i % 200 + 1}"}
    for i in range(5, 3000, 250):
        records[i]["context"] = {"custom_context": {"note": "card 4111-1111-1111-1111"}}
    raw = [line(r) for r in records]
    path = tmp_path / "day.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(raw) + b"\n"))
    t = build_privacy(ALL_ON, "interactions", "upload", {"MISO_HASH_KEY": KEY})
    assert t is not None

    async def collect() -> list[Block]:
        blocks = open_blocks(LocalFile.at(path), START, [t], max_line_bytes=1 << 16)
        async with contextlib.aclosing(blocks):
            return [b async for b in blocks]

    blocks = asyncio.run(collect())
    lines = [x for b in blocks for x in b.lines]
    assert len(lines) == 3000
    check = RecordValidator("interactions", Rules()).check
    for i, (got, source) in enumerate(zip(lines, records, strict=True)):
        record = json.loads(got)
        assert record["user_id"] == expected(source["user_id"]), i
        assert check(got) is None
    ips = [json.loads(lines[i])["context"]["truncated_ip"] for i in range(0, 3000, 100)]
    assert ips == [f"10.1.{i % 250}.0" for i in range(0, 3000, 100)]
    assert t.counts.ids_hashed == 3000
    assert t.counts.ips_truncated == 30
    assert t.counts.findings == {"card@context.custom_context.note": 12}
    assert t.counts.records_redacted == 12
    # offsets still count the bytes as stored
    assert blocks[-1].end_offset(3000) == sum(map(len, raw)) + 3000
    assert all(b"@example.com" not in x and b"4111" not in x for x in lines)


def test_the_benchmark_measures_the_step_in_the_reader_and_in_the_engine(tmp_path: Path) -> None:
    """benchmarks/privacy.py on a small load: both variants read every record, the step
    really ran (ids hashed, PII found), and the engine splice is still in effect."""
    generate(GenerateConfig(out=str(tmp_path), records=3000, days=2, pii_rate=0.02, catalog=False))
    files = sorted(tmp_path.glob("interactions-*.jsonl.gz"))
    result = compare(files, repeat=1)
    assert result["plain"]["records"] == result["privacy"]["records"] == 3000
    assert result["plain"]["valid"] == result["privacy"]["valid"] == 3000
    counts = result["privacy"]["privacy"]
    assert counts["ids_hashed"] >= 3000 and sum(counts["pii_findings"].values()) > 30
    engine = compare_engine(files, tmp_path / "state", repeat=1)
    assert engine["plain"]["records"] == engine["privacy"]["records"] == 3000
    result["engine"] = engine
    assert "with/without privacy" in table(result)


def test_the_benchmark_target_is_backfill_run_end_to_end(tmp_path: Path) -> None:
    """The checked ratio is that of `backfill run` processes sending to the count-only
    server, the table on or off (compare_run raises unless every record reached the server
    and the step ran); read + validate stays in the table as information."""
    generate(GenerateConfig(out=str(tmp_path), records=2000, days=2, pii_rate=0.02, catalog=False))
    files = sorted(tmp_path.glob("interactions-*.jsonl.gz"))
    result = compare(files, repeat=1)
    result["run"] = compare_run(files, tmp_path, repeat=1)
    assert result["run"]["plain"]["records"] == result["run"]["privacy"]["records"] == 2000
    assert result["run"]["plain"]["cpu"] > 0 and result["run"]["privacy"]["cpu"] > 0
    text = table(result)
    assert "the target, `backfill run` end to end, with/without privacy:" in text
    assert "read + validate alone (information" in text
    assert "| backfill run + privacy " in text


def test_lines_that_are_not_utf8_or_not_json_do_not_stop_the_step() -> None:
    lines = [
        b'{"user_id":"\xff\xfe","search":{"keywords":"ana@example.com"}}',
        b'{"user_id":"ok", "x":"caf\xe9 415-555-2671"}',
        b"[1, 2, 3]",
        b'{"user_id": 42, "anonymous_id": "anon-9"}',
    ]
    t = transform()
    block = run(t, lines)
    assert block.lines[0] == b'{"user_id":"\xff\xfe","search":{"keywords":"[email]"}}'
    assert block.lines[1] == b'{"user_id":"%s", "x":"caf\xe9 [phone]"}' % expected("ok").encode()
    assert block.lines[2] == lines[2]
    assert json.loads(block.lines[3]) == {"user_id": 42, "anonymous_id": expected("anon-9")}
    assert t.counts.ids_hashed == 2


def test_generated_logs_with_defects_and_pii_through_the_whole_table(tmp_path: Path) -> None:
    """Every kind of broken line the generator makes goes through; what was valid stays
    valid, what was invalid stays invalid, and no PII is left in what would be sent."""
    summary = generate(
        GenerateConfig(
            out=str(tmp_path),
            records=4000,
            days=2,
            bad_fraction=0.1,
            pii_rate=0.05,
            format="jsonl",
            catalog=False,
        )
    )
    check = RecordValidator("interactions", Rules()).check
    t = build_privacy(ALL_ON, "interactions", "upload", {"MISO_HASH_KEY": KEY})
    assert t is not None
    valid_before = valid_after = 0
    for f in summary.interaction_files():
        if not f.records:
            continue
        lines = (tmp_path / f.path).read_bytes().split(b"\n")
        lines = lines[:-1] if lines[-1] == b"" else lines
        valid_before += sum(check(x) is None for x in lines)
        block = run(t, lines)
        sent = [x for x in block.lines if x and check(x) is None]
        valid_after += len(sent)
        for x in sent:
            assert find_pii(x.decode()) == [], x
    assert (valid_before, valid_after) == (summary.valid, summary.valid)
    assert sum(t.counts.findings.values()) >= len(summary.pii_lines)


def test_ids_over_the_contract_limit_stay_for_the_validator_to_refuse() -> None:
    long_user, long_anon = "u" * 513, "a" * 1025
    record = line({**interaction(0), "user_id": long_user})
    anon = line({**interaction(1, user=""), "anonymous_id": long_anon})
    block = run(transform(), [record, anon])
    assert block.lines == [record, anon]
    check = RecordValidator("interactions", Rules()).check
    assert check(block.lines[0]) is not None and check(block.lines[1]) is not None
    ids = run(transform(operation="delete", kind="users"), [b'"%s"' % long_user.encode()])
    assert ids.lines == [b'"%s"' % long_user.encode()]


def test_a_line_that_falls_back_to_a_full_decode_counts_each_id_once() -> None:
    """The first id takes the fast path, the escaped second one sends the line to the slow
    path, which hashes and counts both: each id is counted once, not three times."""
    t = transform(PrivacySettings(hash_ids=["user_id", "anonymous_id"]))
    block = run(t, [b'{"type":"search","user_id":"u1","anonymous_id":"a\\u0062"}'])
    record = json.loads(block.lines[0])
    assert (record["user_id"], record["anonymous_id"]) == (expected("u1"), expected("ab"))
    assert t.counts.ids_hashed == 2
