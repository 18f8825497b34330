"""Mapped inputs (issue 7): the [mapping] table, its conversions and rules, CSV framing, the
Block contract, resume, and full mapped loads against the embedded server."""

from __future__ import annotations

import gzip
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from backfill.config import load_settings
from backfill.errors import UsageError
from backfill.mapping import MappingTransform, build_transform, map_file_blocks
from backfill.schema import RecordValidator, Rules
from backfill.server import RunningServer
from backfill.sources import Block, Problem, read_blocks
from tests.helpers import dead_letters, run_engine

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
HEAD = 'type = { const = "product_detail_page_view" }\nuser_id = "user"\n'
CHECK = RecordValidator("interactions", Rules(require_timestamp=False)).check


def make(tmp_path: Path, table: str, kind: str = "interactions") -> MappingTransform:
    config = tmp_path / "mapping.toml"
    config.write_text(table)
    transform = build_transform(load_settings(str(config), {"kind": kind}))
    assert isinstance(transform, MappingTransform)
    return transform


def csv_table(fields: str, extra: str = "", head: str = HEAD) -> str:
    return f'[mapping]\nformat = "csv"\n{extra}\n[mapping.fields]\n{head}{fields}\n'


def json_table(fields: str, extra: str = "", head: str = HEAD) -> str:
    return f'[mapping]\nformat = "jsonl"\n{extra}\n[mapping.fields]\n{head}{fields}\n'


Outcome = dict[str, Any] | Problem


async def run(transform: MappingTransform, path: Path) -> dict[int, Outcome]:
    """Line index -> the mapped record (decoded) or the Problem, for every non-blank slot."""
    got: dict[int, Outcome] = {}
    async for block in map_file_blocks(transform, path):
        for slot, line in enumerate(block.lines):
            if line:
                got[block.first + slot] = json.loads(line)
        got.update(block.problems)
    return dict(sorted(got.items()))


async def rows(tmp_path: Path, table: str, text: str | bytes, name: str = "in.csv") -> Any:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return await run(make(tmp_path, table), path)


def reason(outcome: Outcome) -> str:
    assert isinstance(outcome, Problem) and outcome.reason is not None, outcome
    return outcome.reason


# ---------------------------------------------------------------------------------------------
# The mapping itself is checked at start-up, with the config line.
# ---------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ('[mapping]\nformat = "csv"\ncolour = 1\n[mapping.fields]\n' + HEAD, 3, "colour: unknown key"),
    (csv_table('timestamp = { from = "t", convert = "dtime" }'), 7, 'did you mean "datetime"?'),
    (csv_table('timestmap = "t"'), 7, 'did you mean "timestamp"?'),
    (
        csv_table("", head='type = { from = "e", values = { view = "page_view" } }\n'),
        5,
        '"page_view" is not a Miso interaction type',
    ),
    (
        csv_table('anonymous_id = { from = "a", values = { a = "b" }, unmapped = "custom" }'),
        7,
        "it only applies to the `type` of interactions",
    ),
    (csv_table('anonymous_id = { from = "a", unmapped = "drop" }'), 7, "only means something"),
    (csv_table('timestamp = "t"', extra='timezone = "Mars/Olympus"'), 3, "unknown time zone"),
    (csv_table('"context.locale" = { from = "l", const = "x" }'), 7, "exactly one of `from`"),
    (csv_table("", head='user_id = "u"\n'), 4, "needs `type`"),
    (json_table("", extra='delimiter = ";"'), 3, "only applies to format"),
    (csv_table("", extra='delimiter = "ab"'), 3, "exactly one character"),
    (csv_table('context = { locale = "l" }'), 7, 'quoted dotted keys, e.g. "context.locale"'),
    (
        csv_table(
            'timestamp = "t"\n[[mapping.drop]]\nfield = "a"\nmissing = true\n'
            '[[mapping.drop]]\nfield = "b"\nequals = 1\nin = [2]\n'
        ),
        11,
        "exactly one condition",
    ),
    (csv_table('revenue = { from = "p", types = ["buy"] }'), 7, '"buy" is not a Miso'),
    (csv_table('timestamp = { from = "t", date_format = "%Y" }'), 7, "only used by convert"),
    ('[mapping]\nformat = "xml"\n[mapping.fields]\n' + HEAD, 2, "expected one of csv, tsv"),
    ('[mapping]\nformat = "csv"\n', 1, "a table of Miso fields is required"),
    (
        csv_table(
            'timestamp = "t"\n[mapping.fields.type]\nfrom = "e"\nconvert = "lowercase"\n', head=""
        ),
        8,
        'unknown conversion "lowercase" (did you mean "lower"?',
    ),
    (
        csv_table("user_id = 3", head='type = { const = "search" }\n'),
        6,
        "for a constant: { const = 3 }",
    ),
]


@pytest.mark.parametrize(("table", "line", "message"), BAD_CONFIGS)
def test_bad_mapping_is_refused_at_start_naming_the_line(
    tmp_path: Path, table: str, line: int, message: str
) -> None:
    with pytest.raises(UsageError) as err:
        make(tmp_path, table)
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'mapping.toml'} line {line}: mapping."), text
    assert message in text


def test_targets_follow_the_kind(tmp_path: Path) -> None:
    products = '[mapping]\nformat = "jsonl"\n[mapping.fields]\nproduct_id = "id"\ntitle = "t"\n'
    assert make(tmp_path, products, kind="products") is not None
    with pytest.raises(UsageError, match='"user_id" is not a field of Miso products'):
        make(tmp_path, products + 'user_id = "u"\n', kind="products")
    with pytest.raises(UsageError, match="every Miso product needs `product_id`"):
        make(tmp_path, '[mapping]\nformat = "jsonl"\n[mapping.fields]\ntitle = "t"\n', "products")


async def test_products_and_users_get_custom_attributes(tmp_path: Path) -> None:
    table = (
        '[mapping]\nformat = "csv"\n[mapping.fields]\nproduct_id = "sku"\ntitle = "name"\n'
        'original_price = { from = "price", convert = "number" }\n[mapping.leftovers]\n'
    )
    path = tmp_path / "catalog.csv"
    path.write_text("sku,name,price,colour\nA-1,Shoe,9.90,red\n")
    got = await run(make(tmp_path, table, kind="products"), path)
    assert got == {
        1: {
            "custom_attributes": {"colour": "red"},
            "product_id": "A-1",
            "title": "Shoe",
            "original_price": 9.9,
        }
    }


def test_no_mapping_means_native_input(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("batch_size = 5\n")
    assert build_transform(load_settings(str(config), {})) is None


# ---------------------------------------------------------------------------------------------
# Conversions, each one, from CSV text and from typed JSON values.
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Value maps and the unmapped-value rules; constants, defaults, types; drop rules.
# ---------------------------------------------------------------------------------------------

EVENTS = "user,event\nu1,view\nu1,cart\nu1,wishlist\nu1,\n"
VALUES = '{ view = "product_detail_page_view", cart = "add_to_cart" }'


@pytest.mark.parametrize("rule", ["dead_letter", "drop", "custom", "keep"])
async def test_unmapped_value_rules(tmp_path: Path, rule: str) -> None:
    head = (
        f'user_id = "user"\ntype = {{ from = "event", values = {VALUES}, unmapped = "{rule}" }}\n'
    )
    got = await rows(tmp_path, csv_table("", head=head), EVENTS)
    assert got[1] == {"type": "product_detail_page_view", "user_id": "u1"}
    assert got[2] == {"type": "add_to_cart", "user_id": "u1"}
    assert got[4] == {"user_id": "u1"}  # no event: no type (the validator refuses it)
    third = got[3]
    if rule == "dead_letter":
        assert reason(third) == (
            'event: "wishlist" is not in the values of type (unmapped = "dead_letter")'
        )
        assert isinstance(third, Problem) and third.raw == b"u1,wishlist"
    elif rule == "drop":
        assert third == Problem(None, len("u1,wishlist"))
    elif rule == "custom":
        assert third == {"type": "custom", "custom_action_name": "wishlist", "user_id": "u1"}
    else:
        assert third == {"type": "wishlist", "user_id": "u1"}


async def test_constants_defaults_and_types(tmp_path: Path) -> None:
    head = (
        f'type = {{ from = "event", values = {VALUES} }}\n'
        'user_id = "user"\n'
        '"context.locale" = { const = "en-US" }\n'
        '"context.custom_context.tags" = { const = ["a", "b"] }\n'
        'quantities = { from = "qty", convert = "number", default = 1, types = ["add_to_cart"] }\n'
        'duration = { const = 2.5, types = ["product_detail_page_view"] }\n'
        '"context.custom_context.when" = { const = 2026-05-01T12:00:00+02:00 }\n'
    )
    got = await rows(tmp_path, csv_table("", head=head), "user,event,qty\nu1,view,3\nu2,cart,\n")
    context = {
        "locale": "en-US",
        "custom_context": {"tags": ["a", "b"], "when": "2026-05-01T10:00:00.000Z"},
    }
    assert got == {
        1: {
            "type": "product_detail_page_view",
            "user_id": "u1",
            "context": context,
            "duration": 2.5,
        },
        2: {"type": "add_to_cart", "user_id": "u2", "context": context, "quantities": 1},
    }


DROP_ROWS = "user,event,price\nu1,view,1\nu2,cart,\nu3,purchase,3\n"


@pytest.mark.parametrize(
    ("condition", "dropped"),
    [
        ('field = "event"\nequals = "view"', [1]),
        ('field = "event"\nin = ["view", "purchase"]', [1, 3]),
        ('field = "event"\nnot_in = ["view"]', [2, 3]),
        ('field = "price"\nmissing = true', [2]),
        ('field = "price"\nequals = 3', [3]),
    ],
)
async def test_drop_rules(tmp_path: Path, condition: str, dropped: list[int]) -> None:
    table = csv_table("", extra="") + f"[[mapping.drop]]\n{condition}\n"
    got = await rows(tmp_path, table, DROP_ROWS)
    assert [i for i, o in got.items() if isinstance(o, Problem)] == dropped
    assert all(o.reason is None for o in got.values() if isinstance(o, Problem))
    assert len(got) == 3


async def test_json_paths_coalescing_wildcards_and_dotted_keys(tmp_path: Path) -> None:
    head = (
        'type = { const = "checkout" }\n'
        'user_id = { from = ["userId", "user.id"], convert = "string" }\n'
        'product_ids = { from = ["product_id", "items.*.id"], convert = ["string", "list"] }\n'
        'revenue = { from = "totals.0.value", convert = "number" }\n'
        '"context.page.url" = "page.url"\n'
    )
    lines = [
        {"userId": "a", "product_id": 7, "totals": [{"value": "9.5"}], "page.url": "https://x/1"},
        {"user": {"id": 12}, "items": [{"id": "p1"}, {"name": "no id"}, {"id": 3}]},
        {"userId": "", "user": {"id": "b"}, "items": []},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    got = await rows(tmp_path, json_table("", head=head), text, "in.jsonl")
    assert got == {
        0: {
            "type": "checkout",
            "user_id": "a",
            "product_ids": ["7"],
            "revenue": 9.5,
            "context": {"page": {"url": "https://x/1"}},
        },
        1: {"type": "checkout", "user_id": "12", "product_ids": ["p1", "3"]},
        2: {"type": "checkout", "user_id": "b"},
    }


async def test_leftovers_go_to_custom_context(tmp_path: Path) -> None:
    extra = '[mapping.leftovers]\nignore = ["secret", "meta.internal"]\nstrip_prefix = "props."\n'
    table = (
        json_table('"context.custom_context.price" = { from = "props.price", convert = "number" }')
        + extra
    )
    record = {
        "user": "u1",
        "secret": "s",
        "empty": "",
        "none": None,
        "props": {"price": "1.5", "colour": "red", "sizes": [38, 39], "mix": [1, "a"]},
        "meta": {"internal": {"a": 1}, "v": 2, "deep": {"er": True}},
        "rows": [{"a": 1}, {"b": "x"}],
    }
    [got] = (await rows(tmp_path, table, json.dumps(record) + "\n", "in.jsonl")).values()
    assert isinstance(got, dict)
    assert got["context"]["custom_context"] == {
        "colour": "red",
        "sizes": [38, 39],
        "mix": '[1,"a"]',  # a mixed list is not a valid attribute: its JSON text is
        "meta.v": 2,
        "meta.deep.er": True,
        "rows": [{"a": 1}, {"b": "x"}],
        "price": 1.5,
    }
    assert CHECK(json.dumps(got).encode()) is None

    csv = csv_table('"context.custom_context.brand" = { from = "brand", convert = "upper" }')
    csv += '[mapping.leftovers]\nignore = ["skip"]\n'
    got_csv = await rows(tmp_path, csv, "user,brand,colour,skip,size\nu1,acme,red,x,\n")
    assert got_csv == {
        1: {
            "type": "product_detail_page_view",
            "context": {"custom_context": {"colour": "red", "brand": "ACME"}},
            "user_id": "u1",
        }
    }


# ---------------------------------------------------------------------------------------------
# CSV files as they come: quotes, embedded newlines, BOM, CRLF, missing columns, gzip, TSV.
# ---------------------------------------------------------------------------------------------

TEXT_TABLE = csv_table('"context.custom_context.note" = "note"\n"context.custom_context.n" = "n"')


def notes(got: dict[int, Outcome]) -> dict[int, Any]:
    return {
        i: (o.get("context", {}).get("custom_context", {}) if isinstance(o, dict) else o)
        for i, o in got.items()
    }


async def test_quotes_delimiters_and_embedded_newlines(tmp_path: Path) -> None:
    text = (
        "user,note,n\n"
        'u1,"a, b",1\n'
        'u1,"say ""hi""",2\n'
        'u1,"line one\nline two\n\nline four",3\n'
        "u1,plain,4\n"
        'u1,"""quoted""\nnext",5\n'
    )
    got = notes(await rows(tmp_path, TEXT_TABLE, text))
    assert got == {
        1: {"note": "a, b", "n": "1"},
        2: {"note": 'say "hi"', "n": "2"},
        3: {"note": "line one\nline two\n\nline four", "n": "3"},  # lines 4, 5, 6 are blank
        7: {"note": "plain", "n": "4"},
        8: {"note": '"quoted"\nnext', "n": "5"},
    }


async def test_a_stray_quote_in_an_unquoted_value_stays_on_its_line(tmp_path: Path) -> None:
    text = 'user,note,n\nu1,24" screen,1\nu1,plain,2\nu1,"multi\nline",3\nu1,6" cable,4\n'
    got = notes(await rows(tmp_path, TEXT_TABLE, text))
    assert got == {
        1: {"note": '24" screen', "n": "1"},
        2: {"note": "plain", "n": "2"},
        3: {"note": "multi\nline", "n": "3"},
        5: {"note": '6" cable', "n": "4"},
    }


async def test_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    text = '\ufeffuser,note,n\r\nu1,"two\r\nlines",1\r\n\r\nu1,x,2\r\n'.encode()
    got = notes(await rows(tmp_path, TEXT_TABLE, text))
    assert got == {1: {"note": "two\r\nlines", "n": "1"}, 4: {"note": "x", "n": "2"}}


async def test_missing_and_extra_columns(tmp_path: Path) -> None:
    text = "user,note,n\nu1,short\nu1\nu1,x,3,\nu1,x,3,oops\n"
    got = notes(await rows(tmp_path, TEXT_TABLE, text))
    assert got[1] == {"note": "short"}  # missing trailing cells are absent values
    assert got[2] == {}
    assert got[3] == {"note": "x", "n": "3"}  # an empty extra cell is harmless
    assert reason(got[4]) == "the row has 4 fields, the header has 3"


async def test_a_mapped_column_missing_from_the_header_stops_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"the CSV header has no column 'n' .*its columns are: user, note"
    ):
        await rows(tmp_path, TEXT_TABLE, "user,note\nu1,x\n")


async def test_unterminated_quote_is_dead_lettered_and_the_rest_recovers(tmp_path: Path) -> None:
    text = 'user,note,n\nu1,"never closed,1\nu1,fine,2\nu1,also fine,3\n'
    got = notes(await rows(tmp_path, TEXT_TABLE, text))
    assert reason(got[1]).startswith("unterminated quoted value")
    assert got[2] == {"note": "fine", "n": "2"} and got[3] == {"note": "also fine", "n": "3"}


async def test_a_quote_open_longer_than_the_limit_is_given_up(tmp_path: Path) -> None:
    transform = make(tmp_path, TEXT_TABLE)
    transform.max_line_bytes = 64
    path = tmp_path / "in.csv"
    path.write_text('user,note,n\nu1,"open\n' + "x" * 40 + "\n" + "y" * 40 + '",1\nu1,ok,2\n')
    got = notes(await run(transform, path))
    assert reason(got[1]).startswith("unterminated quoted value")
    assert got[2] == {} and got[3] == {"note": "1"}  # the lines after it: records of their own
    assert got[4] == {"note": "ok", "n": "2"}


async def test_bad_utf8_and_malformed_quoting(tmp_path: Path) -> None:
    text = b'user,note,n\nu1,caf\xe9,1\nu1,"a"b"c,2\nu1,ok,3\n'
    got = notes(await rows(tmp_path, TEXT_TABLE, text))
    assert reason(got[1]) == "invalid UTF-8 at byte 6: invalid continuation byte"  # as native
    assert got[3] == {"note": "ok", "n": "3"}
    assert len(got) == 3  # the odd quoting of line 3 is read the way the csv module reads it


async def test_tsv_semicolons_no_quoting_and_gzip(tmp_path: Path) -> None:
    tsv = csv_table('"context.custom_context.note" = "note"', head=HEAD).replace('"csv"', '"tsv"')
    got = await rows(tmp_path, tsv, gzip.compress(b'user\tnote\nu1\t"as is"\n'), "in.tsv.gz")
    assert notes(got) == {1: {"note": '"as is"'}}
    semi = csv_table('"context.custom_context.note" = "note"', extra='delimiter = ";"')
    got = await rows(tmp_path, semi, 'user;note\nu1;"a;b"\n')
    assert notes(got) == {1: {"note": "a;b"}}


# ---------------------------------------------------------------------------------------------
# The Block contract: contiguous units, exact offsets, records held across blocks, resume.
# ---------------------------------------------------------------------------------------------


def multiline_csv(records: int, pad: int = 0) -> tuple[bytes, list[dict[str, str]]]:
    """Rows whose notes hold 0 to 3 line breaks, commas and quotes (and `pad` more bytes)."""
    lines, expected = ["user,note,n"], []
    for i in range(records):
        note = f"row {i}" + "\nmore" * (i % 4) + (', "q"' if i % 5 == 0 else "") + "z" * pad
        cell = '"' + note.replace('"', '""') + '"' if i % 2 == 0 or "\n" in note else note
        lines.append(f"u{i % 7},{cell},{i}")
        expected.append({"note": note, "n": str(i)})
    return ("\n".join(lines) + "\n").encode(), expected


async def test_blocks_stay_contiguous_with_exact_offsets(tmp_path: Path) -> None:
    data, expected = multiline_csv(6_000, pad=500)  # 3 MiB: several reader blocks
    path = tmp_path / "big.csv"
    path.write_bytes(data)
    transform = make(tmp_path, TEXT_TABLE)
    starts = [0, *(i + 1 for i, b in enumerate(data) if b == 10)]  # offset of each line
    next_line, records, boundaries = 0, [], 0
    async for block in map_file_blocks(transform, path):
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
    async for block in map_file_blocks(transform, path):
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
        blocks = read_blocks(path, start_offset=offsets[start], start_line=start)
        async for block in transform.blocks(path, blocks):
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

    out = [b async for b in make(tmp_path, TEXT_TABLE).blocks(path, hand_made())]
    assert [(b.first, len(b.lines), b.offset) for b in out] == [(0, 1, 0), (1, 3, 12), (4, 1, 25)]
    assert out[1].raw_lengths == [5, 1, 4] and out[1].lines[1:] == [b"", b""]
    assert out[1].end_offset(4) == 25
    assert json.loads(out[1].lines[0])["context"]["custom_context"]["note"] == "a\nb\nc"
    assert json.loads(out[2].lines[0])["user_id"] == "u2"


# ---------------------------------------------------------------------------------------------
# Full mapped loads against the embedded server: exact records, exact dead letters.
# ---------------------------------------------------------------------------------------------


def config_settings(name: str) -> dict[str, Any]:
    path = CONFIGS / name
    with open(path, "rb") as fh:
        table = tomllib.load(fh)
    return {"mapping": table["mapping"], "config_file": str(path)}


async def load_sample(
    tmp_path: Path, server: RunningServer, sample: str, config: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Loads a shipped sample with its shipped config: (report, records the server stored)."""
    path = CONFIGS / "samples" / sample
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], **config_settings(config)
    )
    return report, [json.loads(r) for r in server.records("interactions")]


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


def test_the_documented_example_is_a_valid_mapping(tmp_path: Path) -> None:
    import backfill.mapping.spec

    doc = (backfill.mapping.spec.__doc__ or "").splitlines()
    start = doc.index("    [mapping]")
    end = next(i for i in range(start, len(doc)) if doc[i] and not doc[i].startswith("    "))
    transform = make(tmp_path, "\n".join(x[4:] for x in doc[start:end]))
    assert list(transform.spec.fields) == [
        "user_id",
        "anonymous_id",
        "timestamp",
        "product_ids",
        "revenue",
        "quantities",
        "context.locale",
        "context.custom_context.category",
        "type",
    ]
