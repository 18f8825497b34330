"""The [mapping] table is checked at start-up, every mistake with its config line."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.config import load_settings
from backfill.errors import UsageError
from backfill.mapping import build_transform
from tests.mapping.helpers import HEAD, csv_table, json_table, make

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


def test_no_mapping_means_native_input(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("batch_size = 5\n")
    assert build_transform(load_settings(str(config), {})) is None


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
