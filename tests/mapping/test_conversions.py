"""The conversions, each one, from CSV text and from typed JSON values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.mapping.helpers import csv_table, json_table, reason, rows

CONVERSIONS = [
    # (field spec, source value (JSON), expected value or "!error fragment")
    ('{ from = "x", convert = "string" }', 123, "123"),
    ('{ from = "x", convert = "string" }', 12.0, "12"),
    ('{ from = "x", convert = "string" }', True, "true"),
    ('{ from = "x", convert = "number" }', "12.50", 12.5),
    ('{ from = "x", convert = "number" }', " 7 ", 7),
    ('{ from = "x", convert = "number" }', "-3", -3.0),
    ('{ from = "x", convert = "number" }', 4, 4),
    ('{ from = "x", convert = "number" }', "12,50", '!cannot parse "12,50" as a number'),
    ('{ from = "x", convert = "number" }', "nan", '!cannot parse "nan" as a number'),
    ('{ from = "x", convert = "integer" }', "3", 3),
    ('{ from = "x", convert = "integer" }', "3.0", 3),
    ('{ from = "x", convert = "integer" }', "3.5", '!cannot parse "3.5" as a whole number'),
    ('{ from = "x", convert = "boolean" }', "Yes", True),
    ('{ from = "x", convert = "boolean" }', "0", False),
    ('{ from = "x", convert = "boolean" }', "maybe", '!cannot parse "maybe" as a boolean'),
    ('{ from = "x", convert = "lower" }', "MiXed", "mixed"),
    ('{ from = "x", convert = "upper" }', "MiXed", "MIXED"),
    ('{ from = "x", convert = "list" }', "p-1", ["p-1"]),
    ('{ from = "x", convert = "list" }', ["p-1", "p-2"], ["p-1", "p-2"]),
    ('{ from = "x", convert = ["string", "list"] }', 42, ["42"]),
    ('{ from = "x", convert = ["string", "list"] }', [1, 2], ["1", "2"]),
    ('{ from = "x", convert = "number" }', ["1", "2.5"], [1, 2.5]),
    ('{ from = "x", convert = "split", separator = "." }', "a.b. c", ["a", "b", "c"]),
    ('{ from = "x", convert = "datetime" }', "2019-10-01 00:00:00 UTC", "2019-10-01T00:00:00.000Z"),
    (
        '{ from = "x", convert = "datetime" }',
        "2019-10-01T02:00:00+02:00",
        "2019-10-01T00:00:00.000Z",
    ),
    (
        '{ from = "x", convert = "datetime" }',
        "2019-10-01 00:00:00.123456",
        "2019-10-01T00:00:00.123Z",
    ),
    ('{ from = "x", convert = "datetime" }', "2019-10-01", "2019-10-01T00:00:00.000Z"),
    (
        '{ from = "x", convert = "datetime" }',
        "Tue, 01 Oct 2019 10:00:00 GMT",
        "2019-10-01T10:00:00.000Z",
    ),
    (
        '{ from = "x", convert = "datetime", timezone = "Europe/Paris" }',
        "2019-10-01 00:00:00",
        "2019-09-30T22:00:00.000Z",  # summer time: UTC+2
    ),
    (
        '{ from = "x", convert = "datetime", timezone = "Europe/Paris" }',
        "2019-12-01 00:00:00",
        "2019-11-30T23:00:00.000Z",  # winter time: UTC+1
    ),
    (
        '{ from = "x", convert = "datetime", timezone = "-05:00" }',
        "2019-12-01 00:00:00",
        "2019-12-01T05:00:00.000Z",
    ),
    (
        '{ from = "x", convert = "datetime", date_format = ["%d/%m/%Y %H:%M", "%d/%m/%Y"] }',
        "01/10/2019",
        "2019-10-01T00:00:00.000Z",
    ),
    (
        '{ from = "x", convert = "datetime", date_format = "%Y-%m-%d %H:%M:%S %Z" }',
        "2019-10-01 00:00:00 UTC",
        "2019-10-01T00:00:00.000Z",
    ),
    (
        '{ from = "x", convert = "datetime", date_format = "%d/%m/%Y %H:%M %z" }',
        "01/10/2019 02:00 +0200",
        "2019-10-01T00:00:00.000Z",
    ),
    (
        '{ from = "x", convert = "datetime", date_format = "%d/%m/%Y %H:%M" }',
        "2019-10-01",
        '!cannot parse "2019-10-01" as a date-time (expected date_format "%d/%m/%Y %H:%M")',
    ),
    (
        '{ from = "x", convert = "datetime" }',
        "yesterday",
        '!cannot parse "yesterday" as a date-time',
    ),
    ('{ from = "x", convert = "datetime" }', 1569888000, '!use convert = "epoch_s" or "epoch_ms"'),
    ('{ from = "x", convert = "datetime" }', "2016-12-31 23:59:60", "2016-12-31T23:59:60.000Z"),
    (
        '{ from = "x", convert = "datetime" }',
        "2016-12-31T15:59:60.5-08:00",  # a leap second is the last second of a UTC day
        "2016-12-31T23:59:60.500Z",
    ),
    (
        '{ from = "x", convert = "datetime", timezone = "Europe/Paris" }',
        "2017-01-01 00:59:60",
        "2016-12-31T23:59:60.000Z",
    ),
    (
        '{ from = "x", convert = "datetime", date_format = "%d/%m/%Y %H:%M:%S" }',
        "31/12/2016 23:59:60",
        "2016-12-31T23:59:60.000Z",
    ),
    (
        '{ from = "x", convert = "datetime" }',
        "2016-12-31 23:58:60",
        '!cannot parse "2016-12-31 23:58:60" as a date-time',
    ),
    ('{ from = "x", convert = "epoch_s" }', 1569888000, "2019-10-01T00:00:00.000Z"),
    ('{ from = "x", convert = "epoch_s" }', "1569888000.25", "2019-10-01T00:00:00.250Z"),
    ('{ from = "x", convert = "epoch_ms" }', "1569888000123", "2019-10-01T00:00:00.123Z"),
    ('{ from = "x", convert = "epoch_ms" }', 1569888000123.0, "2019-10-01T00:00:00.123Z"),
    ('{ from = "x", convert = "epoch_us" }', 1569888000123456, "2019-10-01T00:00:00.123Z"),
    (
        '{ from = "x", convert = "epoch_ms" }',
        "yesterday",
        '!cannot parse "yesterday" as a date-time (expected epoch_ms)',
    ),
    ('{ from = "x", convert = "epoch_s" }', 1569888000123, "!out of range for epoch_s"),
]


@pytest.mark.parametrize(("spec", "value", "expected"), CONVERSIONS)
async def test_each_conversion_from_json(
    tmp_path: Path, spec: str, value: Any, expected: Any
) -> None:
    table = json_table(f'"context.custom_context.v" = {spec}')
    line = json.dumps({"user": "u1", "x": value})
    [got] = (await rows(tmp_path, table, line + "\n", "in.jsonl")).values()
    if isinstance(expected, str) and expected.startswith("!"):
        assert reason(got).startswith("x: ") and expected[1:] in reason(got)
    else:
        assert isinstance(got, dict) and got["context"]["custom_context"]["v"] == expected


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [c for c in CONVERSIONS if isinstance(c[1], str) and "\n" not in c[1] and "," not in c[1]],
)
async def test_each_conversion_from_csv_text(
    tmp_path: Path, spec: str, value: str, expected: Any
) -> None:
    table = csv_table(f'"context.custom_context.v" = {spec}')
    [got] = (await rows(tmp_path, table, f"user,x\nu1,{value}\n")).values()
    if isinstance(expected, str) and expected.startswith("!"):
        assert reason(got).startswith("x: ") and expected[1:] in reason(got)
    else:
        assert isinstance(got, dict) and got["context"]["custom_context"]["v"] == expected


async def test_date_times_use_the_mapping_time_zone_and_a_field_may_override_it(
    tmp_path: Path,
) -> None:
    table = csv_table(
        'timestamp = { from = "t", convert = "datetime" }\n'
        '"context.custom_context.local" = { from = "t", convert = "datetime", timezone = "UTC" }',
        extra='timezone = "America/New_York"',
    )
    [got] = (await rows(tmp_path, table, "user,t\nu1,2019-07-04 12:00:00\n")).values()
    assert isinstance(got, dict)
    assert got["timestamp"] == "2019-07-04T16:00:00.000Z"
    assert got["context"]["custom_context"]["local"] == "2019-07-04T12:00:00.000Z"
