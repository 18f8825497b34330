"""Encoding choice (issue 2): how a validated batch becomes a request body.

Validation is the same whichever way the body is built (the engine decodes every line into the
contract's Structs in `RecordValidator.check`), so it is timed once, apart, and each way is
timed from validated records to finished bodies of 10,000 records:
  * join:    the validated input bytes joined into the body (`Target.body`, the engine);
  * structs: the Structs that validation decoded, `msgspec.json.encode`d (their decode is
             validation's and not counted here);
  * stdlib:  `json.loads` each line, `json.dumps` the batch (for scale: what a hand-written
             client does, with no validation at all).
Re-encoding is not only slower: Structs drop what they do not model (unknown keys of the open
objects such as `context.page`), so the section also counts records whose body changed.
"""

from __future__ import annotations

import functools
import json
import operator
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

import msgspec

from backfill.schema import INTERACTION_TYPES, RecordValidator, Rules
from backfill.targets import target_for
from benchmarks.data import Dataset, inflate
from benchmarks.report import Section, table

BATCH = 10_000
REPEAT = 3


class _Body(msgspec.Struct):
    data: list[Any]


def _lines(data: Dataset, records: int) -> list[bytes]:
    def all_lines() -> Any:
        carry = b""
        for path in data.files:
            for piece in inflate(path):
                lines = (carry + piece).split(b"\n")
                carry = lines.pop()
                yield from lines

    return list(islice(all_lines(), records))


def _validate(lines: list[bytes]) -> list[bytes]:
    check = RecordValidator("interactions", Rules()).check
    return [x for x in lines if check(x) is None]


def _join(lines: list[bytes]) -> list[bytes]:
    body = target_for("interactions").body
    return [body(lines[start : start + BATCH]) for start in range(0, len(lines), BATCH)]


_UNION: Any = functools.reduce(operator.or_, INTERACTION_TYPES.values())


def _decoded(lines: list[bytes]) -> list[Any]:
    decode = msgspec.json.Decoder(_UNION).decode
    return [decode(x) for x in lines]


def _encode_structs(records: list[Any]) -> list[bytes]:
    encode = msgspec.json.Encoder().encode
    return [
        encode(_Body(records[start : start + BATCH])) for start in range(0, len(records), BATCH)
    ]


def _structs(lines: list[bytes]) -> list[bytes]:
    return _encode_structs(_decoded(lines))


def _stdlib(lines: list[bytes]) -> list[bytes]:
    bodies = []
    for start in range(0, len(lines), BATCH):
        batch = [json.loads(x) for x in lines[start : start + BATCH]]
        bodies.append(json.dumps({"data": batch}, separators=(",", ":")).encode())
    return bodies


WAYS: dict[str, tuple[str, Callable[[Any], list[bytes]]]] = {
    "join": ("join the validated input bytes (engine)", _join),
    "structs": ("msgspec.json.encode the validated Structs", _encode_structs),
    "stdlib": ("json.loads + json.dumps (no validation)", _stdlib),
}


def _best(fn: Callable[[Any], Any], arg: Any) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(REPEAT):
        started = time.process_time()
        out = fn(arg)
        best = min(best, time.process_time() - started)
    return best, out


def _changed(lines: list[bytes], bodies: list[bytes]) -> int:
    """Records whose re-encoded form is not the same JSON value as the input line."""
    sent = [r for body in bodies for r in json.loads(body)["data"]]
    return sum(json.loads(line) != record for line, record in zip(lines, sent, strict=True))


OPEN_OBJECT_RECORD = (
    b'{"type":"home_page_view","user_id":"u1","timestamp":"2026-06-01T00:00:00.000Z",'
    b'"context":{"page":{"url":"https://shop.example.com/","section":"hero"}}}'
)


def _struct_round_trip_loses_data() -> bool:
    """A valid record (`context.page` is an open object in the contract) re-encoded through
    the Structs: does the body still hold everything the input line held?"""
    if RecordValidator("interactions", Rules()).check(OPEN_OBJECT_RECORD) is not None:
        raise ValueError("the open-object example is not valid any more")
    body = _structs([OPEN_OBJECT_RECORD])[0]
    return bool(json.loads(body)["data"][0] != json.loads(OPEN_OBJECT_RECORD))


def section(data: Dataset, records: int) -> Section:
    validate_s, lines = _best(_validate, _lines(data, records))
    inputs = {"join": lines, "structs": _decoded(lines), "stdlib": lines}
    results: dict[str, dict[str, Any]] = {}
    for key, (label, fn) in WAYS.items():
        seconds, bodies = _best(fn, inputs[key])
        results[key] = {
            "label": label,
            "records_per_s": round(len(lines) / seconds),
            "cpu_us_per_record": round(seconds / len(lines) * 1e6, 2),
            "body_bytes": sum(map(len, bodies)),
            "records_changed": _changed(lines, bodies),
        }
    rows = [
        (
            r["label"],
            r["records_per_s"],
            r["cpu_us_per_record"],
            r["body_bytes"],
            r["records_changed"],
        )
        for r in results.values()
    ]
    loses = _struct_round_trip_loses_data()
    markdown = "\n".join(
        [
            f"{len(lines):,} valid records in batches of {BATCH:,}, in process, best of "
            f"{REPEAT} (CPU time). Validation, common to every way, took "
            f"{validate_s / len(lines) * 1e6:.2f} us a record and is not included below. "
            "'changed' counts records whose body is not the same JSON value as the input line.",
            "",
            table(["encoding", "records/s", "CPU us / record", "body bytes", "changed"], rows),
            "",
            "A valid record with a key the contract leaves open (`context.page.section`) "
            + (
                "loses that key when re-encoded through the Structs; joining the input bytes "
                "sends it as written."
                if loses
                else "survives the Struct round trip."
            ),
        ]
    )
    out = {
        "records": len(lines),
        "validate_us_per_record": round(validate_s / len(lines) * 1e6, 2),
        "ways": results,
        "struct_round_trip_loses_open_keys": loses,
    }
    return Section("encoding", "Encoding choice (issue 2)", markdown, out)
