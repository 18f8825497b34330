"""CSV files as they come: quotes, embedded newlines, BOM, CRLF, missing columns, gzip, TSV."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from backfill.errors import UsageError
from tests.mapping.helpers import HEAD, TEXT_TABLE, csv_table, make, notes, reason, rows, run


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
