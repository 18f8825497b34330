"""Products, users and deletes against the embedded server, with exact counts."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from backfill.cli import main
from backfill.server import Faults, RunningServer
from tests.helpers import dead_letters, interaction, line, run_engine, write_lines

DELETE_SEED = 2  # with error_rate 0.5: two requests pass, then one fails


def product(pid: str, **fields: object) -> bytes:
    return line({"product_id": pid, "title": f"Product {pid}", **fields})


def stored(server: RunningServer, kind: str) -> dict[str, dict[str, object]]:
    field = "product_id" if kind == "products" else "user_id"
    return {r[field]: r for r in map(json.loads, server.records(kind))}  # type: ignore[arg-type]


async def cli(server: RunningServer, *args: str) -> tuple[int, str, str]:
    return await backfill(server.secret_key, *args, "--endpoint", server.url)


async def backfill(key: str, *args: str) -> tuple[int, str, str]:
    """`python -m backfill ARGS` as a user runs it, with `key` in MISO_API_KEY."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backfill", *args,
        env={**os.environ, "MISO_API_KEY": key},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_products_keep_the_newest_version_of_each_id(
    tmp_path: Path, server: RunningServer
) -> None:
    a = write_lines(
        tmp_path / "a.jsonl",
        [
            product("p1", title="new", updated_at="2026-06-02T00:00:00Z"),
            product("p2", title="first"),
            product("p3"),
        ],
    )
    b = write_lines(
        tmp_path / "b.jsonl",
        [
            product("p1", title="old", updated_at="2026-06-01T00:00:00Z"),
            product("p2", title="last"),
        ],
    )
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(a), str(b)], kind="products"
    )
    got = stored(server, "products")
    assert sorted(got) == ["p1", "p2", "p3"]
    assert got["p1"]["title"] == "new" and got["p2"]["title"] == "last"
    assert report["records_superseded"] == 2 and report["records_accepted"] == 3
    assert report["batches_sent"] == 2  # batches never span files; default 100 per batch


async def test_attribute_types_must_stay_consistent(tmp_path: Path, server: RunningServer) -> None:
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            product("p1", custom_attributes={"colour": "red"}),
            product("p2", custom_attributes={"colour": 5}),
            product("p3", custom_attributes={"colour": "blue", "size": [1, 2]}),
        ],
    )
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)], kind="products")
    assert sorted(stored(server, "products")) == ["p1", "p3"]
    [entry] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert entry["line"] == 2 and "custom_attributes.colour: expected string" in entry["reason"]
    assert report["records_invalid"] == 1


async def test_task_status_errors_become_rejected_records(
    tmp_path: Path, server: RunningServer
) -> None:
    server.set_faults(Faults(task_reject_id="^bad-"))
    path = write_lines(
        tmp_path / "p.jsonl", [product(f"{'bad' if i == 3 else 'ok'}-{i}") for i in range(5)]
    )
    report = await run_engine(
        tmp_path, server.url, server.secret_key, [str(path)], kind="products", wait_tasks=True
    )
    assert sorted(stored(server, "products")) == ["ok-0", "ok-1", "ok-2", "ok-4"]
    [entry] = dead_letters(tmp_path / "state" / "dead-letter.jsonl")
    assert entry["line"] == 4 and entry["stage"] == "server"
    assert report["records_accepted"] == 4 and report["records_rejected_by_server"] == 1


async def test_users_load(tmp_path: Path, server: RunningServer) -> None:
    rows = [line({"user_id": f"u{i}", "name": f"N{i}", "age": 30 + i}) for i in range(250)]
    rows.append(line({"user_id": "_hidden"}))
    path = write_lines(tmp_path / "users.jsonl.gz", rows, gz=True)
    report = await run_engine(tmp_path, server.url, server.secret_key, [str(path)], kind="users")
    assert sorted(stored(server, "users")) == sorted(f"u{i}" for i in range(250))
    assert report["records_invalid"] == 1 and report["batches_sent"] == 3


async def test_delete_products_resumes_after_a_failure(
    tmp_path: Path, server: RunningServer
) -> None:
    catalog = write_lines(tmp_path / "c.jsonl", [product(f"p{i}") for i in range(300)])
    await run_engine(
        tmp_path / "up", server.url, server.secret_key, [str(catalog)], kind="products"
    )
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"p{i}\n" for i in range(250)) + "_bad\n")
    args = (
        "delete", "products", "--ids", str(ids), "--state-dir", str(tmp_path / "del"),
        "--batch-size", "50", "--yes", "--progress", "off", "--concurrency", "1",
        "--max-attempts", "1",
    )  # fmt: skip
    # a flaky API (seeded: some requests pass, then one fails): the run stops, resumable
    server.set_faults(Faults(error_rate=0.5, seed=DELETE_SEED))
    code, _, err = await cli(server, *args)
    assert code == 3, err
    assert "not an id" in err and "_bad" in err
    deleted = 300 - len(stored(server, "products"))
    assert deleted % 50 == 0 and 0 < deleted < 250
    # the API is back: the same command resumes and sends only the batches not yet acknowledged
    server.set_faults(Faults())
    before = (await server.stats())["requests"]["total"]
    code, _, err = await cli(server, *args)
    assert code == 0, err
    assert sorted(stored(server, "products"), key=lambda p: int(p[1:])) == [
        f"p{i}" for i in range(250, 300)
    ]
    assert (await server.stats())["requests"]["total"] - before == 5 - deleted // 50


async def test_delete_dry_run_lists_and_deletes_nothing(
    tmp_path: Path, server: RunningServer
) -> None:
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"product_id": "p1"}\n{"product_id": "p2"}\n')
    code, out, err = await cli(server, "delete", "products", "--ids", str(ids), "--dry-run")
    assert code == 0 and out.split() == ["p1", "p2"] and "would delete 2 products" in err
    assert (await server.stats())["requests"]["total"] == 0
    code, out, err = await cli(server, "delete", "products", "--ids", str(ids))
    assert code == 2 and "--yes" in err  # no terminal to confirm on


async def test_delete_a_users_interactions(tmp_path: Path, server: RunningServer) -> None:
    rows = [line(interaction(i, user=f"u{i % 5}")) for i in range(100)]
    path = write_lines(tmp_path / "i.jsonl", rows)
    await run_engine(tmp_path / "up", server.url, server.secret_key, [str(path)])
    ids = tmp_path / "forget.txt"
    ids.write_text("u1\nu3\n")
    code, _, err = await cli(
        server, "delete", "interactions", "--user-ids", str(ids), "--yes",
        "--state-dir", str(tmp_path / "del"),
    )  # fmt: skip
    assert code == 0, err
    users = {json.loads(r)["user_id"] for r in server.records("interactions")}
    assert users == {"u0", "u2", "u4"} and len(server.records("interactions")) == 60
    assert (await server.stats())["interactions"]["deleted"] == 40


async def test_diff_reconciles_the_api_with_a_local_catalog(
    tmp_path: Path, server: RunningServer
) -> None:
    remote = write_lines(tmp_path / "remote.jsonl", [product(p) for p in ("p1", "p2", "x1", "x2")])
    await run_engine(tmp_path, server.url, server.secret_key, [str(remote)], kind="products")
    local = write_lines(tmp_path / "local.jsonl", [product(p) for p in ("p1", "p2", "p3")])
    deletes = tmp_path / "deletes.txt"
    code, out, err = await cli(
        server, "diff", "products", "--ids-from", str(local), "--write-deletes", str(deletes)
    )
    assert code == 1, err
    assert "missing from the API (load them): 1\n  p3" in out
    assert "only in the API (delete them?): 2\n  x1\n  x2" in out
    assert deletes.read_text() == "x1\nx2\n"


async def test_delete_users(tmp_path: Path, server: RunningServer) -> None:
    rows = [line({"user_id": f"u{i}", "name": f"N{i}"}) for i in range(120)]
    path = write_lines(tmp_path / "users.jsonl", rows)
    await run_engine(tmp_path / "up", server.url, server.secret_key, [str(path)], kind="users")
    gone = tmp_path / "gone.jsonl"
    gone.write_text("".join(f'{{"user_id": "u{i}"}}\n' for i in range(0, 120, 2)))
    code, _, err = await cli(
        server, "delete", "users", "--ids", str(gone), "--yes", "--state-dir", str(tmp_path / "d")
    )
    assert code == 0, err
    assert sorted(stored(server, "users"), key=lambda u: int(u[1:])) == [
        f"u{i}" for i in range(1, 120, 2)
    ]


async def load_products(tmp_path: Path, server: RunningServer, ids: list[str]) -> None:
    catalog = write_lines(tmp_path / "remote.jsonl", [product(p) for p in ids])
    await run_engine(tmp_path, server.url, server.secret_key, [str(catalog)], kind="products")
    assert sorted(stored(server, "products")) == sorted(ids)


async def test_diff_refuses_an_empty_local_side(tmp_path: Path, server: RunningServer) -> None:
    await load_products(tmp_path, server, ["p1", "p2", "p3"])
    local = tmp_path / "local.jsonl"
    local.write_text('{"sku": "p1"}\n\n')  # not one product id in it
    deletes = tmp_path / "deletes.txt"
    args = ("diff", "products", "--ids-from", str(local), "--write-deletes", str(deletes))
    code, out, err = await cli(server, *args)
    assert code == 2, err
    assert f"{local} holds no products ids, so all 3 products the API holds" in err
    assert "--allow-mass-delete" in err and "Nothing was written" in err
    assert out == "" and not deletes.exists()


async def test_diff_refuses_a_file_of_another_kind(tmp_path: Path, server: RunningServer) -> None:
    """Interactions carry user_id too: read as a users catalog they look like one."""
    users = write_lines(tmp_path / "u.jsonl", [line({"user_id": f"u{i}"}) for i in range(10)])
    await run_engine(tmp_path / "up", server.url, server.secret_key, [str(users)], kind="users")
    events = write_lines(
        tmp_path / "i.jsonl", [line(interaction(i, user=f"u{i % 8}")) for i in range(40)]
    )
    deletes = tmp_path / "deletes.txt"
    args = ("diff", "users", "--ids-from", str(events), "--write-deletes", str(deletes))
    code, out, err = await cli(server, *args)
    assert code == 2, err
    assert (
        f"{events} holds interactions, not users: 40 of the 40 records looked at have a `type`"
        in err
    )
    assert out == "" and not deletes.exists()
    assert (await server.stats())["requests"]["total"] == 1  # refused before asking the API


async def test_diff_refuses_a_mass_delete_unless_allowed(
    tmp_path: Path, server: RunningServer
) -> None:
    await load_products(tmp_path, server, [f"p{i}" for i in range(10)])
    local = tmp_path / "local.txt"
    local.write_text("p0\np1\np2\np3\np-new\n")  # a partial export: 6 of 10 would go
    deletes, missing = tmp_path / "deletes.txt", tmp_path / "missing.txt"
    args = (
        "diff", "products", "--ids-from", str(local),
        "--write-deletes", str(deletes), "--write-missing", str(missing),
    )  # fmt: skip
    code, out, err = await cli(server, *args)
    assert code == 2, err
    assert "6 of the 10 products the API holds (60%) would be proposed for deletion" in err
    assert out == "" and not deletes.exists() and not missing.exists()
    code, out, err = await cli(server, *args, "--allow-mass-delete")
    assert code == 1, err
    assert "(going ahead: --allow-mass-delete)" in err
    assert deletes.read_text() == "".join(f"p{i}\n" for i in range(4, 10))
    assert missing.read_text() == "p-new\n"
    assert "only in the API (delete them?): 6" in out


async def test_diff_names_an_endpoint_that_does_not_answer(
    tmp_path: Path, server: RunningServer
) -> None:
    await load_products(tmp_path, server, ["p1"])
    server.set_faults(Faults(stall_rate=1.0, stall_seconds=30))
    local = write_lines(tmp_path / "local.jsonl", [product("p1")])
    code, out, err = await cli(
        server, "diff", "products", "--ids-from", str(local), "--timeout", "0.5"
    )
    assert code == 3, err
    assert f"cannot list the products ids of {server.url}: request timed out" in err
    assert "Traceback" not in err and server.secret_key not in out + err and out == ""


def test_diff_names_an_unreachable_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISO_API_KEY", "diff-secret-key")
    local = write_lines(tmp_path / "local.jsonl", [product("p1")])
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        code = main(["diff", "products", "--ids-from", str(local), "--endpoint", endpoint])
    out, err = capsys.readouterr()
    assert code == 3, err
    assert err.startswith(f"backfill: error: cannot list the products ids of {endpoint}: ")
    assert "check --endpoint and the network, then rerun" in err
    assert "Traceback" not in err and "diff-secret-key" not in out + err


def test_diff_names_a_missing_ids_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MISO_API_KEY", raising=False)  # the file is checked before the key
    missing = tmp_path / "nowhere.jsonl"
    code = main(["diff", "users", "--ids-from", str(missing), "--endpoint", "http://127.0.0.1:9"])
    assert code == 2
    assert capsys.readouterr().err == f"backfill: error: --ids-from {missing}: no such file\n"
    assert main(["diff", "users", "--ids-from", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
