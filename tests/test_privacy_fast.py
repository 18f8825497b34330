"""The privacy step's fast path: one decode for validation and the step, ids spliced into the
bytes. Whatever the path, the result must be exactly what decoding, replacing and encoding
gives, and what validating the rewritten line gives."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backfill.errors import UsageError
from backfill.privacy import (
    HASHED_IDS_NOTE,
    HashKey,
    PrivacySettings,
    PrivacyTransform,
    ids_to_delete,
)
from backfill.privacy.transform import BLANK, settled
from backfill.schema import MAX_ANONYMOUS_ID, MAX_ID, OUT_OF_WINDOW, RecordValidator, Rules
from backfill.sources import Block
from tests.test_privacy import prefilter_path  # noqa: F401  (each test, each pre-filter)

KEY = "fast-path-key-0123456789abcdef"
ALL_ON = PrivacySettings(hash_ids=["user_id", "anonymous_id"], truncate_ip=True, pii="redact")
WINDOW = Rules(since=datetime(2026, 6, 1, tzinfo=UTC), until=datetime(2026, 7, 1, tzinfo=UTC))


def pseudonym(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def block_of(lines: list[bytes]) -> Block:
    return Block(list(lines), 0, 0, sum(map(len, lines)) + len(lines))


def step(table: PrivacySettings = ALL_ON) -> PrivacyTransform:
    return PrivacyTransform(table, HashKey(KEY), "interactions")


def outcomes(block: Block, check: Any) -> list[tuple[Any, ...]]:
    """What batching makes of each slot: a record, a dead letter, filtered, blank."""
    out: list[tuple[Any, ...]] = []
    for i, line in enumerate(block.lines):
        problem = block.problems.get(block.first + i)
        if not line:
            if problem is None:
                out.append(("blank",))
            elif problem.filtered:
                out.append(("filtered",))
            else:
                out.append(("dead letter", problem.reason, problem.raw))
            continue
        reason = check(line)
        if reason is None:
            out.append(("record", line))
        elif reason is OUT_OF_WINDOW:
            out.append(("filtered",))
        elif line.isspace():
            out.append(("blank",))
        else:
            out.append(("dead letter", reason, line))
    return out


def both_paths(
    lines: list[bytes], table: PrivacySettings = ALL_ON, rules: Rules = WINDOW
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], PrivacyTransform, PrivacyTransform]:
    """(outcomes of the step then validation, outcomes of the fused path, both steps)."""
    two, fused = step(table), step(table)
    validator = RecordValidator("interactions", rules)
    old = block_of(lines)
    two.apply(old)
    check = fused.validate_with(RecordValidator("interactions", rules))
    new = block_of(lines)
    fused.apply(new)
    assert new.raw_lengths in (None, [len(x) for x in lines])
    return outcomes(old, validator.check), outcomes(new, check), two, fused


def rec(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"type": "search", "timestamp": "2026-06-02T10:00:00Z"}
    return base | fields


def dumps(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


MIXED = [
    dumps(rec(user_id="ana@example.com", anonymous_id="v-1")),
    dumps(rec(user_id="bob", context={"truncated_ip": "203.0.113.77"})),
    dumps(rec(user_id="u", type="search", search={"keywords": "call +1 415 555 2671"})),
    dumps(rec(user_id="old", timestamp="2025-01-01T00:00:00Z")),  # outside the window
    dumps(rec(user_id=5)),  # invalid: not a string
    b'{"type":"search","user_id":"cut',  # malformed
    b"   ",  # whitespace only: blank
    b"",
    dumps(rec(user_id="m", context={"truncated_ip": "::ffff:198.51.100.9"})),  # valid once cut
    dumps(rec(user_id="x" * (MAX_ID + 1))),  # too long: left for the validator
    b'{"type":"search","user_id":"a","timestamp":"2026-06-02T10:00:00Z","user_id":"b"}',
    b'{"type":"search","user\\u005fid":"esc","timestamp":"2026-06-02T10:00:00Z"}',
    dumps(rec(user_id="n", context={"custom_context": {"user_id": "n"}})),  # nested, same
    dumps(rec(user_id="d", search={"keywords": "mail dan@example.com"})),
    b'{"type": "search", "user_id": "spaced", "timestamp": "2026-06-02T10:00:00Z"}',
    b'{"type":"search","user_id" :"odd","timestamp":"2026-06-02T10:00:00Z"}',
    dumps(rec(anonymous_id="", user_id="e")),  # an empty id stays empty
    dumps(rec(type="nope", user_id="f")),  # invalid type
]


def test_the_fused_path_gives_what_the_step_then_validation_gave() -> None:
    for table in (
        ALL_ON,
        PrivacySettings(hash_ids=["user_id"]),
        PrivacySettings(truncate_ip=True, pii="dead-letter"),
        PrivacySettings(pii="warn"),
    ):
        old, new, two, fused = both_paths(MIXED, table)
        assert new == old, table
        assert fused.counts.report() == two.counts.report(), table
    old, new, two, fused = both_paths(MIXED)
    kinds = [o[0] for o in new]
    assert kinds.count("record") == 11 and kinds.count("filtered") == 1
    assert kinds.count("blank") == 2 and kinds.count("dead letter") == 4
    assert settled(b"") == BLANK and settled(b"{}") is None


def test_duplicate_nested_and_escaped_keys_are_rewritten_as_json_values() -> None:
    _, new, _, fused = both_paths(MIXED)
    records = [json.loads(o[1]) for o in new if o[0] == "record"]
    by_id = {r.get("user_id"): r for r in records}
    # a key given twice: the value read (the last) hashed, the other gone from the bytes
    assert pseudonym("b") in by_id and b'"a"' not in dict(enumerate(new))[10][1]
    assert pseudonym("esc") in by_id  # a key spelled with an escape
    nested = by_id[pseudonym("n")]  # the nested same-named key is free data, left as is
    assert nested["context"]["custom_context"]["user_id"] == "n"
    assert pseudonym("spaced") in by_id and pseudonym("odd") in by_id
    assert by_id[pseudonym("m")]["context"]["truncated_ip"] == "198.51.100.0"
    assert by_id[pseudonym("bob")]["context"]["truncated_ip"] == "203.0.113.0"
    assert by_id[pseudonym("e")]["anonymous_id"] == ""
    assert by_id[pseudonym("ana@example.com")]["anonymous_id"] == pseudonym("v-1")
    letters = [o for o in new if o[0] == "dead letter"]
    assert all(b"ana@" not in o[2] and b"dan@" not in o[2] for o in letters)
    assert fused.counts.ids_hashed == 14


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def spelled(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A valid interaction spelled one of many ways, and the record json reads from it."""
    record = rec(user_id=draw(_TEXT.filter(bool)))
    if draw(st.booleans()):
        record["anonymous_id"] = draw(_TEXT)
    if draw(st.booleans()):  # the same names, nested, with their own values
        custom = {"user_id": draw(_TEXT), "anonymous_id": draw(_TEXT)}
        record["context"] = {"custom_context": custom}
    if draw(st.booleans()):
        record["search"] = {"keywords": draw(st.sampled_from(['"user_id":"x"', "user_id"]))}
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (",", " : ")]))
    text = json.dumps(record, separators=separators, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):  # the key given twice: json (and msgspec) keep the last
        first = json.dumps(draw(_TEXT))
        text = text.replace("{", '{"user_id":' + first + separators[0], 1)
    return text.encode(), json.loads(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(spelled(), min_size=1, max_size=6))
def test_the_splice_equals_decode_replace_encode(cases: list[tuple[bytes, dict[str, Any]]]) -> None:
    lines = [line for line, _ in cases]
    table = PrivacySettings(hash_ids=["user_id", "anonymous_id"])
    for path in ("two passes", "fused"):
        t = step(table)
        block = block_of(lines)
        if path == "fused":
            t.validate_with(RecordValidator("interactions", WINDOW))
        t.apply(block)
        for (raw, record), new in zip(cases, block.lines, strict=True):
            want = dict(record)
            for name in ("user_id", "anonymous_id"):
                if want.get(name):
                    want[name] = pseudonym(want[name])
            assert json.loads(new) == want, (path, raw)
            assert json.loads(new.decode()) == json.loads(new)  # one value per key
            assert new.count(b'"user_id"') <= raw.count(b'"user_id"')


def test_the_regex_fallback_hashes_ids_up_to_the_schema_maximum() -> None:
    def broken(name: str, n: int) -> bytes:  # not JSON: only the regex reaches it
        return b'{"type":"search","%s":"%s",' % (name.encode(), b"v" * n)

    lines = [
        broken("user_id", MAX_ID),
        broken("user_id", MAX_ID + 1),
        broken("anonymous_id", MAX_ANONYMOUS_ID),
        broken("anonymous_id", MAX_ANONYMOUS_ID + 1),
    ]
    t = step(PrivacySettings(hash_ids=["user_id", "anonymous_id"]))
    block = block_of(lines)
    t.apply(block)
    assert pseudonym("v" * MAX_ID).encode() in block.lines[0]
    assert block.lines[1] == lines[1]
    assert pseudonym("v" * MAX_ANONYMOUS_ID).encode() in block.lines[2]
    assert block.lines[3] == lines[3]
    assert t.counts.ids_hashed == 2


def test_ids_to_delete_are_the_pseudonyms_when_user_ids_are_hashed() -> None:
    table = PrivacySettings(hash_ids=["user_id"])
    environ = {"MISO_HASH_KEY": KEY}
    hashed = ids_to_delete(table, "users", ["ana@example.com", "bob"], environ)
    assert hashed == ([pseudonym("ana@example.com"), pseudonym("bob")], True)
    assert ids_to_delete(table, "interactions", ["ana"], environ) == ([pseudonym("ana")], True)
    assert ids_to_delete(None, "users", ["ana"], environ) == (["ana"], False)
    assert ids_to_delete(table, "products", ["p-1"], environ) == (["p-1"], False)
    with pytest.raises(UsageError, match="MISO_HASH_KEY"):
        ids_to_delete(table, "users", ["ana"], {})
    assert "raw ids are not printed" in HASHED_IDS_NOTE


def test_a_key_spelled_with_an_escape_is_not_confused_with_a_nested_one() -> None:
    line = (
        b'{"type":"search","user\\u005fid":"esc","timestamp":"2026-06-02T10:00:00Z",'
        b'"context":{"custom_context":{"user_id":"esc"}}}'
    )
    for fused in (False, True):
        t = step(PrivacySettings(hash_ids=["user_id"]))
        if fused:
            t.validate_with(RecordValidator("interactions", WINDOW))
        block = block_of([line])
        t.apply(block)
        record = json.loads(block.lines[0])
        assert record["user_id"] == pseudonym("esc")
        assert record["context"]["custom_context"]["user_id"] == "esc"


def test_a_line_that_leaves_the_fast_path_midway_is_counted_once() -> None:
    lines = [
        b'{"type":"search","user_id":"p","anonymous_id" :"q","timestamp":"2026-06-02T10:00:00Z"}',
        dumps(rec(user_id="r", anonymous_id="s")),
        # the nested pair first: were the first line counted twice, the block's count of
        # "user_id" would balance and this line take the fast path, hashing the nested one
        b'{"context":{"custom_context":{"user_id":"w"}},"type":"search","user_id":"w",'
        b'"timestamp":"2026-06-02T10:00:00Z"}',
    ]
    old, new, two, fused = both_paths(lines)
    assert new == old
    assert fused.counts.ids_hashed == two.counts.ids_hashed == 5
    first = json.loads(new[0][1])
    assert (first["user_id"], first["anonymous_id"]) == (pseudonym("p"), pseudonym("q"))
    last = json.loads(new[2][1])
    assert last["user_id"] == pseudonym("w")
    assert last["context"]["custom_context"]["user_id"] == "w"
