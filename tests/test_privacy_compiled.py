"""The compiled privacy pass (`backfill/privacy/_splice.c`): whatever line it is given, the
result must be the Python path's (the same JSON value, the same counts, the same lines to
scan for PII), and the C code must hold up as a Python extension (caches, errors, memory)."""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import re
import shutil
import tracemalloc
from bisect import bisect_right
from itertools import accumulate
from operator import add
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backfill.errors import UsageError
from backfill.privacy import HashKey, PrivacySettings, PrivacyTransform
from backfill.privacy.detect import candidate_offsets
from backfill.privacy.rewrite import REWRITE_ENV, compiled_rewrite
from backfill.sources import Block

try:
    from backfill.privacy import _splice as splice
except ImportError:  # no C compiler at install: the Python path is the one installed
    COMPILER = shutil.which("cc") or shutil.which("gcc")
    pytestmark = pytest.mark.skipif(COMPILER is None, reason="the C extension was not built")

KEY = "compiled-path-key-0123456789abcdef"
ALL_ON = PrivacySettings(hash_ids=["user_id", "anonymous_id"], truncate_ip=True, pii="redact")


def pseudonym(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def on_path(path: str, table: PrivacySettings, monkeypatch: pytest.MonkeyPatch) -> PrivacyTransform:
    with monkeypatch.context() as env:
        env.setenv(REWRITE_ENV, path)
        env.setenv("BACKFILL_PII_PREFILTER", "python")
        t = PrivacyTransform(table, HashKey(KEY), "interactions")
    assert (t._compiled is not None) == (path == "compiled")
    return t


def applied(t: PrivacyTransform, lines: list[bytes]) -> Block:
    block = Block(list(lines), 0, 0, sum(map(len, lines)) + len(lines))
    t.apply(block)
    return block


def decoded(line: bytes) -> Any:
    """The JSON value a decoder reads (the last of a key given twice), None if not JSON: by
    msgspec, as the validator reads it (json.loads takes NaN and Infinity, which are not
    JSON and which the validator refuses)."""
    try:
        return msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def ids_sent(line: bytes) -> list[Any]:
    """Every top-level user_id and anonymous_id pair and every context.truncated_ip pair in
    the bytes, a key given twice included: a raw id left beside its pseudonym is sent, even
    where a decoder keeps only the last. (Other keys given twice may stay: the step passes
    them on as it found them, as a load without the table does.)"""
    pairs = json.loads(line, object_pairs_hook=Pairs)
    found = [(k, v) for k, v in pairs if k in ("user_id", "anonymous_id")]
    for key, value in pairs:
        if key == "context" and isinstance(value, Pairs):
            found += [(k, v) for k, v in value if k == "truncated_ip"]
    return found


def pseudonyms(line: bytes) -> set[bytes]:
    return set(re.findall(rb"[0-9a-f]{64}", line))


class Pairs(list[tuple[str, Any]]):
    """An object's pairs, in order (a JSON array stays a plain list)."""


def same_record(a: bytes, b: bytes) -> bool:
    return decoded(a) == decoded(b) and ids_sent(a) == ids_sent(b)


def test_the_extension_is_built_where_a_compiler_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make venv` builds it (setup.py, optional): a silent build failure would leave every
    install on the slower Python path, so a machine with a compiler must have it (where
    there is none, every test of this module is skipped, this one included)."""
    monkeypatch.delenv(REWRITE_ENV, raising=False)
    assert compiled_rewrite() is splice.rewrite  # the default, when built
    assert compiled_rewrite("compiled") is splice.rewrite
    assert compiled_rewrite("python") is None
    with pytest.raises(UsageError, match=r"BACKFILL_ID_REWRITE is 'c': choose one of python"):
        compiled_rewrite("c")


EDGES = [
    # (line, the JSON value the step must send)
    (b'{"user_id":"ana","anonymous_id":"v1"}', {"user_id": "ana", "anonymous_id": "v1"}),
    # the same names nested, or inside a string, are free data
    (
        b'{"context":{"custom_context":{"user_id":"n","truncated_ip":"1.2.3.4"}},"user_id":"n"}',
        {
            "context": {"custom_context": {"user_id": "n", "truncated_ip": "1.2.3.4"}},
            "user_id": "n",
        },
    ),
    (b'{"search":{"keywords":"\\"user_id\\":\\"x\\""},"user_id":"y"}', None),
    (b' { "user_id" : "spaced" , "context" : { "truncated_ip" : "10.1.2.3" } } ', None),
    (b'{"user_id":null,"anonymous_id":5,"context":"not an object"}', None),
    (b'{"user_id":"","anonymous_id":"e"}', None),  # an empty id stays empty
    (b'{"user\\u005fid":"escaped key"}', None),  # the Python path's (a key with an escape)
    (b'{"user_id":"esc\\"aped"}', None),  # an escape in the value
    (b'{"user_id":"caf\xc3\xa9"}', None),  # not ASCII
    (b'{"user_id":"a","user_id":"b"}', None),  # given twice: the last is the record's
    (b'{"context":{"truncated_ip":"1.2.3.4","truncated_ip":"5.6.7.8"},"user_id":"c"}', None),
    (b'{"context":{"truncated_ip":"1.2.3.4"},"context":{"truncated_ip":"9.9.9.9"}}', None),
    (b'{"context":{"truncated_ip":"::ffff:198.51.100.9"}}', None),
    (b'{"context":{"truncated_ip":"2001:db8:1234:5678::1"}}', None),
    (b'{"context":{"truncated_ip":"198.51.100.0"}}', None),  # a /24 already
    (b'{"context":{"truncated_ip":"not-an-ip"}}', None),
    (b'{"user_id":"%s"}' % (b"x" * 513), None),  # too long: the validator's to refuse
    (b'{"anonymous_id":"%s"}' % (b"x" * 1024), None),  # anonymous_id's limit is 1024
    (b'{"product_ids":["a",{"b":[1,{"user_id":"z"}]}],"user_id":"deep","n":-1.5e3,"t":true}', None),
    (b"{}", None),
    (b'{"user_id":"cut', None),  # malformed: the Python path's regex, best effort
    (b'["user_id","a"]', None),
    (b'{"user_id":"a"} trailing', None),
    (b'{"user_id":"a",}', None),
    (b'{"user_id" "a"}', None),
    (b"not json at all", None),
    # not JSON for the decoder, though json.loads takes them: the Python path's to judge
    (b'{"user_id":"a","search":{"user_id":"n","k":Infinity}}', None),
    (b'{"user_id":"a","d":NaN}', None),
    (b'{"user_id":"a","d":-Infinity}', None),
    (b'{"user_id":"a","d":' + b"[" * 3000 + b"]" * 3000 + b"}", None),  # nested too deeply
    (b'{"user_id":"a@b.co","d":' + b"[" * 3000 + b"]" * 3000 + b"}", None),  # and flagged
    (b"   ", None),
]


def test_edge_cases_send_what_the_python_path_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [line for line, _ in EDGES]
    compiled = on_path("compiled", ALL_ON, monkeypatch)
    python = on_path("python", ALL_ON, monkeypatch)
    fast, slow = applied(compiled, lines), applied(python, lines)
    for (raw, _), a, b in zip(EDGES, fast.lines, slow.lines, strict=True):
        if isinstance(decoded(raw), dict):
            assert same_record(a, b), raw
        else:  # not a record (a dead letter to be): ids hashed best effort, as below
            assert a == b or pseudonyms(a) <= pseudonyms(b), raw
            if raw.startswith(b'{"user_id":"a",'):  # its top-level id is hashed all the same
                assert a.startswith(b'{"user_id":"%s",' % pseudonym("a").encode()), raw
    records = [line for line in lines if isinstance(decoded(line), dict)]
    counted = [on_path(path, ALL_ON, monkeypatch) for path in ("compiled", "python")]
    for t in counted:
        applied(t, records)
    assert counted[0].counts.report() == counted[1].counts.report()  # of the records
    assert counted[0].counts.ids_hashed == 13
    assert ids_sent(fast.lines[9]) == [("user_id", pseudonym("b"))]  # the raw "a" is gone
    assert HashKey(KEY).hash_utf8("café".encode()) == pseudonym("café").encode()
    first, nested = json.loads(fast.lines[0]), json.loads(fast.lines[1])
    assert first == {"user_id": pseudonym("ana"), "anonymous_id": pseudonym("v1")}
    assert nested["user_id"] == pseudonym("n")
    assert nested["context"]["custom_context"] == {"user_id": "n", "truncated_ip": "1.2.3.4"}
    spaced = fast.lines[3]  # rewritten in place: the spacing kept
    assert spaced == (
        b' { "user_id" : "%s" , "context" : { "truncated_ip" : "10.1.2.0" } } '
        % pseudonym("spaced").encode()
    )


_ID = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=10),
    st.sampled_from(["", "ana@example.com", "u-1", "x" * 600, "203.0.113.9"]),
    st.none(),
    st.integers(-5, 5),
)
_IP = st.one_of(
    st.sampled_from(
        ["203.0.113.77", "198.51.100.0", "::ffff:192.0.2.1", "2001:db8::1", "nope", "", "1.2.3"]
    ),
    _ID,
)


def _nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    names = st.sampled_from(["user_id", "truncated_ip", "a", "k\u00e9"])
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(names, inner, max_size=3))


_FREE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _ID),
    _nest,
    max_leaves=6,
)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """A JSON object spelled one of many ways: ids of every type, the names nested, given
    twice, keys with escapes, spacing; sometimes cut or with junk (not JSON)."""
    pairs: list[tuple[str, Any]] = []
    for name in draw(st.permutations(["user_id", "anonymous_id", "context", "search", "x"])):
        if not draw(st.booleans()):
            continue
        if name == "context":
            inner = [("truncated_ip", draw(_IP))] if draw(st.booleans()) else []
            inner += [("custom_context", draw(_FREE))] if draw(st.booleans()) else []
            value: Any = dict(inner) if draw(st.integers(0, 5)) else draw(_FREE)
        elif name in ("user_id", "anonymous_id"):
            value = draw(_ID)
        else:
            value = draw(_FREE)
        pairs.append((name, value))
    if pairs and draw(st.integers(0, 4)) == 0:  # a key given twice
        pairs.append((pairs[0][0], draw(_ID)))
    sep, colon = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : "), ("\t,", ":\t")]))
    ascii_only = draw(st.booleans())
    body = sep.join(
        f"{json.dumps(k, ensure_ascii=ascii_only)}{colon}{json.dumps(v, ensure_ascii=ascii_only)}"
        for k, v in pairs
    )
    text = draw(st.sampled_from(["{%s}", " {%s} ", "{ %s }"])) % body
    if draw(st.integers(0, 6)) == 0:
        text = text.replace('"user_id"', '"user\\u005fid"', 1)
    data = text.encode()
    mangle = draw(st.integers(0, 8))
    if mangle == 0 and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mangle == 1:
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at] + draw(st.sampled_from([b'"', b"{", b"]", b",", b"\\", b"\xff"])) + data[at:]
        )
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=8))
def test_the_compiled_pass_sends_what_the_python_path_sends(lines: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        compiled = on_path("compiled", ALL_ON, monkeypatch)
        python = on_path("python", ALL_ON, monkeypatch)
    fast, slow = applied(compiled, lines), applied(python, lines)
    for raw, a, b in zip(lines, fast.lines, slow.lines, strict=True):
        if isinstance(decoded(raw), dict):  # a JSON object: the same record and ids sent
            assert same_record(a, b), raw
        else:  # not a record: a dead letter to be, where ids are hashed best effort (the
            # Python regex also hashes nested ones; the C scan only those it locates)
            assert a == b or pseudonyms(a) <= pseudonyms(b), raw
    if all(isinstance(decoded(raw), dict) for raw in lines):
        assert compiled.counts.report() == python.counts.report()
    assert fast.raw_lengths in (None, [len(x) for x in lines])


@pytest.mark.parametrize("pad", [0, 1, 30, 61, 62, 63, 64, 65, 127, 200, 4000])
def test_brackets_and_quotes_inside_strings_are_not_structure(pad: int) -> None:
    """The walk skips nested objects and arrays by balancing brackets: brackets, colons and
    commas inside strings (short, long, across the 16-byte steps of the string scan) must
    not count, and the C pass must locate the ids itself (no line left to Python)."""
    text = "x" * pad
    lines = [
        b'{"a":{"k":"},\\u0022user_id"},"user_id":"raw"}',  # a backslash: the byte walk
        b'{"a":{"k":"%s}],{[:"},"user_id":"raw","context":{"truncated_ip":"1.2.3.4"}}'
        % text.encode(),
        b'{"a":["%s]","}",{"b":"{{"}],"user_id":"raw"}' % text.encode(),
        b'{"context":{"p":{"q":"%s}"},"truncated_ip":"1.2.3.4"},"user_id":"raw"}' % text.encode(),
    ]
    cache, ips = splice.cache(8), splice.cache(8)
    work = list(lines)
    changed, unusual, _ = splice.rewrite(
        work,
        ((b"user_id", cache, lambda raw: b"HASHED"),),
        (b"context", b"truncated_ip", ips, lambda raw: b"1.2.3.0"),
        False,
    )
    assert unusual == []
    assert changed == [4, 2]
    for raw, new in zip(lines, work, strict=True):
        assert new == raw.replace(b'"raw"', b'"HASHED"').replace(b"1.2.3.4", b"1.2.3.0")


def flagged_by_python(lines: list[bytes]) -> list[int]:
    joined = b"\n".join(lines)
    starts = list(map(add, accumulate(map(len, lines), initial=0), range(len(lines) + 1)))
    return sorted({bisect_right(starts, pos) - 1 for pos in candidate_offsets(joined)})


def flagged_by_c(lines: list[bytes]) -> list[int]:
    work = list(lines)
    _, _, flagged = splice.rewrite(work, (), None, True)
    assert work == lines
    return list(flagged)


_MARKY = st.text(alphabet='0123456789 -.%+@\\u4B02bx"', max_size=40).map(str.encode)


@settings(max_examples=500, deadline=None)
@given(st.lists(_MARKY, min_size=1, max_size=10))
def test_the_compiled_marks_flag_the_lines_the_python_prefilter_flags(lines: list[bytes]) -> None:
    lines = [line for line in lines if line]
    if lines:
        assert flagged_by_c(lines) == flagged_by_python(lines)


@pytest.mark.parametrize("size", [15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 9000])
def test_marks_are_found_at_every_place_of_short_and_long_lines(size: int) -> None:
    """The bit-parallel test works on 64-byte words and lines up to 4 KiB (longer ones take
    the byte loop): a mark across a word's edge, at the start, at the end."""
    marks = [b"5551234567890", b"555 1234", b"+4", b"@", b"%40", b"%2b", b"\\u00"]
    near = [b"555123456789", b"55 1234", b"555 123", b"+x", b"%4", b"%2", b"\\u0", b"555  1234"]
    for mark in marks + near:
        for at in {0, 1, 15, 16, 31, 60, 61, 62, 63, 64, 120, size - len(mark)}:
            if 0 <= at <= size - len(mark):
                line = b"a" * at + mark + b"a" * (size - at - len(mark))
                assert flagged_by_c([line]) == flagged_by_python([line]), (mark, at)
                assert flagged_by_c([line]) == ([0] if mark in marks else []), (mark, at)


def test_a_cache_holds_at_most_its_limit_and_computes_each_value_once() -> None:
    calls: list[bytes] = []

    def compute(raw: bytes) -> bytes:
        calls.append(raw)
        return raw.upper()

    cache = splice.cache(2)
    lines = [b'{"user_id":"%s"}' % v for v in (b"a", b"a", b"b", b"a", b"c", b"d", b"e", b"a")]
    work = list(lines)
    changed, unusual, flagged = splice.rewrite(work, ((b"user_id", cache, compute),), None, False)
    upper = (b"A", b"A", b"B", b"A", b"C", b"D", b"E", b"A")
    assert work == [b'{"user_id":"%s"}' % v for v in upper]
    assert (changed, unusual, flagged) == ([8], [], [])
    # "a" was cached twice; full at "c" (cleared), and again at "e"
    assert calls == [b"a", b"b", b"c", b"d", b"e", b"a"]
    assert splice.cached(cache) == 2
    with pytest.raises(ValueError, match="1 to 2"):
        splice.cache(0)


def test_colliding_and_many_values_are_each_found() -> None:
    """Open addressing: 50,000 values through a cache of 4,096 (cleared on the way), each
    line given its own value back; then the values it holds again, all found there."""
    cache = splice.cache(4096)
    values = [b"user-%d" % i for i in range(50_000)]
    lines = [b'{"user_id":"%s"}' % v for v in values]
    work = list(lines)
    splice.rewrite(work, ((b"user_id", cache, lambda raw: raw[::-1]),), None, False)
    assert work == [b'{"user_id":"%s"}' % v[::-1] for v in values]
    held = splice.cached(cache)
    assert held == (50_000 - 1) % 4096 + 1  # cleared when full, then filled again
    seen: list[bytes] = []
    again = [b'{"user_id":"%s"}' % v for v in values[-held:]]
    splice.rewrite(again, ((b"user_id", cache, lambda raw: seen.append(raw) or raw),), None, False)
    assert seen == [] and again == [b'{"user_id":"%s"}' % v[::-1] for v in values[-held:]]


def test_a_failing_compute_raises_and_leaves_valid_lines() -> None:
    def broken(raw: bytes) -> bytes:
        raise ValueError("boom")

    def wrong(raw: bytes) -> bytes:
        return "not bytes"  # type: ignore[return-value]

    lines = [b'{"user_id":"a"}', b'{"user_id":"b"}']
    for compute, error in ((broken, ValueError), (wrong, TypeError)):
        work = list(lines)
        with pytest.raises(error):
            splice.rewrite(work, ((b"user_id", splice.cache(8), compute),), None, False)
        assert work == lines
    with pytest.raises(TypeError):
        splice.rewrite(lines, ((b"user_id", splice.cache(8), 5),), None, False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        splice.rewrite(lines, ((b"user_id", {}, bytes.upper),), None, False)  # type: ignore[arg-type]
    work: list[Any] = [b'{"user_id":"a"}', "a str", None]
    target = ((b"user_id", splice.cache(8), bytes.upper),)
    changed, unusual, _ = splice.rewrite(work, target, None, False)
    assert (changed, unusual, work[0]) == ([1], [1, 2], b'{"user_id":"A"}')


def test_the_pass_does_not_leak() -> None:
    """Every reference the C code takes is given back: a thousand passes over a block hold
    no more memory than one (tracemalloc sees the objects Python allocates for it)."""
    t = PrivacyTransform(ALL_ON, HashKey(KEY), "interactions")
    rewrite = compiled_rewrite("compiled")
    assert rewrite is not None
    lines = [
        b'{"user_id":"u%d","anonymous_id":"v%d","context":{"truncated_ip":"10.0.%d.9"},'
        b'"search":{"keywords":"call 555 123 4567"}}' % (i % 50, i, i % 7)
        for i in range(200)
    ]

    def once() -> None:
        work = list(lines)
        rewrite(work, t._targets, t._nested, True)

    for _ in range(50):  # the caches fill
        once()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20_000, f"{grown:,} bytes held after 1,000 passes"
