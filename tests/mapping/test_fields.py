"""What the compiled mapping makes of a record: value maps and unmapped values, constants,
defaults and types, drop rules, JSON paths, leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backfill.sources import Problem
from tests.mapping.helpers import CHECK, csv_table, json_table, make, reason, rows, run


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


# ---------------------------------------------------------------------------------------------
# Value maps and the unmapped-value rules; constants, defaults, types; drop rules.
# ---------------------------------------------------------------------------------------------

EVENTS = "user,event\nu1,view\nu1,cart\nu1,wishlist\nu1,\n"
DROPPED_WISHLIST = """event: "wishlist" is not in the values of type (unmapped = 'drop')"""
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
        assert third == Problem(DROPPED_WISHLIST, len("u1,wishlist"), filtered=True)
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
    assert all(o.filtered for o in got.values() if isinstance(o, Problem))
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
