"""s3:// inputs against a real S3-compatible server (moto's) on 127.0.0.1."""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto.server")

from backfill.errors import InputUnreadable, UsageError
from backfill.server import Faults, RunningServer
from backfill.sources import LocalFile, find_sources
from backfill.sources.cloud import ObjectSource, find_objects
from tests.helpers import interaction, line, write_lines
from tests.moto_s3 import SECRET, CuttingProxy, aws_env, boto, moto_subprocess
from tests.test_resume import Runner, check_invariants


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A new bucket on the shared server, and the environment that reaches it."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GOOGLE_")):
            monkeypatch.delenv(name)
    for name, value in aws_env(moto_url, str(tmp_path)).items():
        monkeypatch.setenv(name, value)
    name = f"t-{uuid.uuid4().hex[:12]}"
    client = boto(moto_url)
    client.create_bucket(Bucket=name)
    client.name = name
    return client


def put(client: Any, key: str, body: bytes) -> None:
    client.put_object(Bucket=client.name, Key=key, Body=body)


async def read(source: Any, offset: int = 0) -> bytes:
    return b"".join([piece async for piece in source.chunks(offset)])


KEYS = [
    "events/2026/06/01/part-0.jsonl.gz",
    "events/2026/06/01/part-1.jsonl.gz",
    "events/2026/06/02/part-0.jsonl.gz",
    "events/2026/08/30/part-0.jsonl.gz",
    "events/2026/06/01/late/part-9.jsonl.gz",  # one segment deeper: not */*
    "events/2026/09/01/part-0.jsonl.gz",  # outside 0[6-8]
    "events/2026/06/01/part-0.jsonl",  # not *.jsonl.gz
    "events/2026-06-01.jsonl.gz",
]


def test_glob_matches_segment_by_segment_in_key_order(bucket: Any) -> None:
    for key in reversed(KEYS):
        put(bucket, key, b"{}\n")
    b = bucket.name
    found = find_objects(f"s3://{b}/events/2026/0[6-8]/*/*.jsonl.gz")
    assert [s.name for s in found] == [
        f"s3://{b}/events/2026/06/01/part-0.jsonl.gz",
        f"s3://{b}/events/2026/06/01/part-1.jsonl.gz",
        f"s3://{b}/events/2026/06/02/part-0.jsonl.gz",
        f"s3://{b}/events/2026/08/30/part-0.jsonl.gz",
    ]
    assert [s.relative for s in found] == [
        "06/01/part-0.jsonl.gz",
        "06/01/part-1.jsonl.gz",
        "06/02/part-0.jsonl.gz",
        "08/30/part-0.jsonl.gz",
    ]
    assert all(s.key == s.name for s in found)
    deep = find_objects(f"s3://{b}/events/2026/**/part-?.jsonl.gz")
    assert len(deep) == 6 and f"s3://{b}/events/2026/06/01/late/part-9.jsonl.gz" in [
        s.name for s in deep
    ]
    day = find_objects(f"s3://{b}/events/2026-06-*.jsonl.gz")
    assert [(s.name, s.relative) for s in day] == [
        (f"s3://{b}/events/2026-06-01.jsonl.gz", "2026-06-01.jsonl.gz")
    ]


def test_a_key_or_a_prefix_names_objects_like_a_file_or_a_directory(bucket: Any) -> None:
    for key in KEYS:
        put(bucket, key, b"{}\n")
    put(bucket, "events/2026/06/01/_SUCCESS", b"")
    b = bucket.name
    one = find_objects(f"s3://{b}/events/2026/06/01/part-1.jsonl.gz")
    assert [(s.name, s.relative) for s in one] == [
        (f"s3://{b}/events/2026/06/01/part-1.jsonl.gz", "part-1.jsonl.gz")
    ]
    below = find_objects(f"s3://{b}/events/2026/06/01")
    assert [s.relative for s in below] == [
        "late/part-9.jsonl.gz",
        "part-0.jsonl",
        "part-0.jsonl.gz",
        "part-1.jsonl.gz",
    ]


def test_local_and_s3_inputs_mix(bucket: Any, tmp_path: Path) -> None:
    put(bucket, "logs/a.jsonl", b"{}\n")
    (tmp_path / "b.jsonl").write_bytes(b"{}\n")
    found = find_sources([str(tmp_path / "*.jsonl"), f"s3://{bucket.name}/logs/*.jsonl"])
    assert [type(s) for s in found] == [LocalFile, ObjectSource]
    assert [s.relative for s in found] == ["b.jsonl", "a.jsonl"]


def test_an_overwritten_object_changes_its_fingerprint(bucket: Any) -> None:
    url = f"s3://{bucket.name}/logs/a.jsonl"
    put(bucket, "logs/a.jsonl", b'{"a": 1}\n')
    before = find_objects(url)[0].fingerprint()
    assert before == find_objects(url)[0].fingerprint()
    assert before.size == 9
    put(bucket, "logs/a.jsonl", b'{"a": 2}\n')  # same size, other bytes
    after = find_objects(url)[0].fingerprint()
    assert after.size == 9 and after != before


async def test_chunks_are_the_stored_bytes_from_any_offset(bucket: Any) -> None:
    data = random.Random(7).randbytes(3 * (1 << 20) + 12345)
    put(bucket, "blob.bin", data)
    put(bucket, "empty.jsonl", b"")
    source = find_objects(f"s3://{bucket.name}/blob.bin")[0]
    assert await read(source) == data
    assert await read(source, 1_234_567) == data[1_234_567:]
    assert await read(source, len(data) - 1) == data[-1:]
    assert await read(source, len(data)) == b""
    pieces = [len(p) async for p in source.chunks(0)]
    assert sum(pieces) == len(data) and len(pieces) >= 3
    assert await read(find_objects(f"s3://{bucket.name}/empty.jsonl")[0]) == b""


async def test_a_gzip_object_streams_as_stored(bucket: Any) -> None:
    text = b"".join(b'{"n": %d}\n' % i for i in range(200_000))
    put(bucket, "day.jsonl.gz", gzip.compress(text))
    source = find_objects(f"s3://{bucket.name}/day.jsonl.gz")[0]
    assert gzip.decompress(await read(source)) == text


async def test_an_object_rewritten_mid_read_is_unreadable(bucket: Any) -> None:
    put(bucket, "a.jsonl", b"x" * (3 << 20))
    source = find_objects(f"s3://{bucket.name}/a.jsonl")[0]
    put(bucket, "a.jsonl", b"y" * (3 << 20))
    with pytest.raises(InputUnreadable, match=r"changed while it was being read.*--force"):
        await read(source)


async def test_an_object_deleted_before_its_read_is_unreadable(bucket: Any) -> None:
    put(bucket, "a.jsonl", b"x" * 1000)
    source = find_objects(f"s3://{bucket.name}/a.jsonl")[0]
    bucket.delete_object(Bucket=bucket.name, Key="a.jsonl")
    with pytest.raises(InputUnreadable, match=r"a\.jsonl was deleted while it was being read"):
        await read(source, 10)


async def test_a_dropped_connection_is_resumed_from_the_offset_reached(
    bucket: Any, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random.Random(3).randbytes(4 << 20)
    put(bucket, "blob.bin", data)
    proxy = CuttingProxy(int(moto_url.rsplit(":", 1)[1]), after=1 << 20, cuts=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.start())
    try:
        source = find_objects(f"s3://{bucket.name}/blob.bin")[0]
        assert await read(source, 100) == data[100:]
        assert proxy.cut == 2
    finally:
        proxy.stop()


async def test_a_connection_that_keeps_dropping_is_a_resumable_stop(
    bucket: Any, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(bucket, "blob.bin", random.Random(3).randbytes(4 << 20))
    monkeypatch.setattr("backfill.sources.cloud.RETRY_DELAY", 0.01)
    proxy = CuttingProxy(int(moto_url.rsplit(":", 1)[1]), after=2000, cuts=1000)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.start())
    try:
        source = find_objects(f"s3://{bucket.name}/blob.bin")[0]
        with pytest.raises(InputUnreadable, match=r"blob.bin at byte \d+ after 3 retries") as e:
            await read(source)
        assert e.value.exit_code == 3 and SECRET not in str(e.value)
    finally:
        proxy.stop()


def usage_error(url: str) -> str:
    with pytest.raises(UsageError) as e:
        find_sources([url])
    assert e.value.exit_code == 2
    assert SECRET not in str(e.value)
    return str(e.value)


def test_a_missing_bucket_is_named(bucket: Any) -> None:
    message = usage_error("s3://no-such-bucket-here/logs/*.jsonl")
    assert "no such bucket s3://no-such-bucket-here" in message


def test_an_empty_listing_is_named(bucket: Any) -> None:
    put(bucket, "logs/a.jsonl", b"{}\n")
    message = usage_error(f"s3://{bucket.name}/logs/*.csv")
    assert f"no object in bucket s3://{bucket.name} matches" in message
    message = usage_error(f"s3://{bucket.name}/other")
    assert f"no object found at 's3://{bucket.name}/other'" in message


def test_missing_credentials_are_named(bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    message = usage_error(f"s3://{bucket.name}/logs/*.jsonl")
    assert f"no credentials to read bucket s3://{bucket.name}" in message
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE" in message


def test_refused_credentials_are_named(
    bucket: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with moto_subprocess(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        message = usage_error("s3://locked-bucket/logs/*.jsonl")
    assert "access to bucket s3://locked-bucket was refused" in message
    assert "check that the credentials are right" in message


def test_a_profile_from_the_shared_files(
    bucket: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    put(bucket, "logs/a.jsonl", b"{}\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "credentials"
    creds.write_text(f"[loader]\naws_access_key_id = testing\naws_secret_access_key = {SECRET}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "loader")
    assert [s.relative for s in find_sources([f"s3://{bucket.name}/logs/*"])] == ["a.jsonl"]
    monkeypatch.setenv("AWS_PROFILE", "nobody")
    assert "AWS_PROFILE=nobody is in neither" in usage_error(f"s3://{bucket.name}/logs/*")
    creds.write_text(f"aws_secret_access_key = {SECRET}\n")  # no [section]: unparsable
    message = usage_error(f"s3://{bucket.name}/logs/*")
    assert f"cannot parse {creds} (AWS_PROFILE=nobody); check its format" in message


def test_a_bucket_name_with_a_wildcard_is_refused() -> None:
    assert "name a bucket (no wildcards in it)" in usage_error("s3://logs-*/a.jsonl")


async def test_gs_objects_through_an_xml_api_endpoint(
    bucket: Any, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GCS shares the S3 XML API for listing and reading; moto serves it, anonymously, to a
    GCS client pointed at it with GOOGLE_BASE_URL (keys without "/", which GCS escapes)."""
    data = random.Random(5).randbytes(2 << 20)
    name = f"g{uuid.uuid4().hex[:12]}"  # no "-": GCS escapes it, moto would not unescape it
    bucket.create_bucket(Bucket=name)
    for key in ("day-2.jsonl", "day-1.jsonl", "night-1.jsonl"):
        bucket.put_object(Bucket=name, Key=key, Body=data, ACL="public-read")
    monkeypatch.setenv("GOOGLE_BASE_URL", moto_url)
    monkeypatch.setenv("GOOGLE_SKIP_SIGNATURE", "true")
    found = find_sources([f"gs://{name}/day-*.jsonl"])
    assert [(s.name, s.relative) for s in found] == [
        (f"gs://{name}/day-1.jsonl", "day-1.jsonl"),
        (f"gs://{name}/day-2.jsonl", "day-2.jsonl"),
    ]
    assert found[0].fingerprint().size == len(data)
    assert await read(found[1], 777) == data[777:]


def test_a_broken_gcs_credentials_file_is_named(
    bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    message = usage_error("gs://acme-logs/events/*.jsonl.gz")
    assert "cannot open bucket gs://acme-logs" in message and "missing.json" in message
    assert "check the GOOGLE_APPLICATION_CREDENTIALS variables" in message
    (tmp_path / "key.json").write_text('{"type": "service_account"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    assert "Unable to decode service account file" in usage_error("gs://acme-logs/x.jsonl")


def test_the_extra_is_imported_only_for_a_bucket_and_named_when_missing() -> None:
    script = (
        "import sys; sys.modules['obstore'] = None\n"
        "import backfill.cli, backfill.engine, backfill.sources\n"
        "from backfill.errors import UsageError\n"
        "try:\n"
        "    backfill.sources.find_sources(['s3://bucket/logs/*.jsonl'])\n"
        "except UsageError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "install backfill[cloud]" in out.stdout, out.stderr
    lazy = "import sys, backfill.cli, backfill.engine; print('obstore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cli_tells_a_missing_bucket_without_a_traceback(bucket: Any, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "backfill", "run", "s3://no-such-bucket-here/x/*.jsonl",
         "--endpoint", "http://127.0.0.1:9", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env={**os.environ, "MISO_API_KEY": "k"}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "no such bucket s3://no-such-bucket-here" in proc.stderr
    assert "Traceback" not in proc.stderr and SECRET not in proc.stdout + proc.stderr


# -- end to end: `backfill run` over objects, through the engine's open_blocks(source) ---------


def upload_logs(bucket: Any, tmp_path: Path, files: int = 4, per_file: int = 2_500) -> Any:
    """Day files (odd ones gzip) in the bucket under logs/; returns (pattern, origin)."""
    origin: dict[bytes, tuple[str, int]] = {}
    for f in range(files):
        rows = [line(interaction(f * per_file + i)) for i in range(per_file)]
        name = f"day-{f}.jsonl{'.gz' if f % 2 else ''}"
        local = write_lines(tmp_path / "upload" / name, rows, gz=bool(f % 2))
        put(bucket, f"logs/2026/{name}", local.read_bytes())
        url = f"s3://{bucket.name}/logs/2026/{name}"
        origin.update({r: (url, n + 1) for n, r in enumerate(rows)})
    return f"s3://{bucket.name}/logs/*/day-*", origin


def no_secret_in(*places: Path | str) -> None:
    for place in places:
        if isinstance(place, str):
            assert SECRET not in place
            continue
        for path in [place] if place.is_file() else place.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


async def test_run_loads_objects_with_exact_counts(
    bucket: Any, tmp_path: Path, server: RunningServer
) -> None:
    (tmp_path / "upload").mkdir()
    pattern, origin = upload_logs(bucket, tmp_path)
    runner = Runner(tmp_path, server, [pattern])
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter(list(origin))
    report = runner.final_report()
    assert report["records_accepted"] == len(origin) == 10_000
    no_secret_in(output, tmp_path / "state", runner.report)


async def test_an_interrupted_run_over_objects_resumes(
    bucket: Any, tmp_path: Path, server: RunningServer
) -> None:
    (tmp_path / "upload").mkdir()
    pattern, origin = upload_logs(bucket, tmp_path)
    server.set_faults(Faults(latency="0.03"))
    runner = Runner(tmp_path, server, [pattern])
    code, output = await runner.leg(signal.SIGKILL, 15)
    assert code in (0, -signal.SIGKILL), output
    code, output = await runner.leg(signal.SIGTERM, 10)
    assert code in (0, 143), output
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    report = runner.final_report()
    check_invariants(server, origin, report)
    assert report["legs"] == 3
    no_secret_in(output, tmp_path / "state", runner.report)


async def test_a_changed_object_is_refused_unless_forced(
    bucket: Any, tmp_path: Path, server: RunningServer
) -> None:
    (tmp_path / "upload").mkdir()
    pattern, origin = upload_logs(bucket, tmp_path, files=2, per_file=500)
    runner = Runner(tmp_path, server, [pattern])
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter(list(origin))
    extra = [line(interaction(10**6 + i)) for i in range(100)]
    put(bucket, "logs/2026/day-9.jsonl", b"".join(x + b"\n" for x in extra))
    code, output = await runner.leg(None, 0)  # a new object matching the glob: only it is read
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter([*origin, *extra])
    changed = f"s3://{bucket.name}/logs/2026/day-0.jsonl"
    rows = sorted((n, r) for r, (url, n) in origin.items() if url == changed)
    late = line(interaction(2 * 10**6))
    put(bucket, "logs/2026/day-0.jsonl", b"".join(r + b"\n" for _, r in rows) + late + b"\n")
    code, output = await runner.leg(None, 0)
    assert code == 2 and changed in output and "--force" in output, output
    runner.cmd.append("--force")  # resumes anyway: what was acknowledged is not sent again
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter([*origin, *extra, late])


async def test_local_and_s3_inputs_load_together(
    bucket: Any, tmp_path: Path, server: RunningServer
) -> None:
    (tmp_path / "upload").mkdir()
    pattern, origin = upload_logs(bucket, tmp_path, files=2, per_file=1_000)
    local_rows = [line(interaction(5 * 10**5 + i)) for i in range(700)]
    local = write_lines(tmp_path / "local.jsonl.gz", local_rows, gz=True)
    runner = Runner(tmp_path, server, [str(local), pattern])
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter([*origin, *local_rows])


async def test_a_connection_failing_mid_object_stops_resumably(
    bucket: Any, tmp_path: Path, server: RunningServer, moto_url: str
) -> None:
    rows = [line(interaction(i)) for i in range(10_000)]  # about 1.5 MiB, plain
    put(bucket, "logs/day-0.jsonl", b"".join(r + b"\n" for r in rows))
    proxy = CuttingProxy(int(moto_url.rsplit(":", 1)[1]), after=64 << 10, cuts=1000)
    runner = Runner(tmp_path, server, [f"s3://{bucket.name}/logs/*.jsonl"])
    runner.env["AWS_ENDPOINT_URL"] = proxy.start()
    try:
        code, output = await runner.leg(None, 0)
    finally:
        proxy.stop()
    assert code == 3, output
    assert f"cannot read s3://{bucket.name}/logs/day-0.jsonl at byte" in output
    assert "after 3 retries" in output and "Traceback" not in output
    runner.env["AWS_ENDPOINT_URL"] = moto_url
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter(rows)
    no_secret_in(output, tmp_path / "state", runner.report)


async def test_shards_split_objects_by_key_and_together_load_each_once(
    bucket: Any, tmp_path: Path, server: RunningServer
) -> None:
    """The shard of an object comes from its key below the glob's fixed prefix."""
    (tmp_path / "upload").mkdir()
    pattern, origin = upload_logs(bucket, tmp_path, files=6, per_file=300)
    accepted = []
    for shard in ("0/2", "1/2"):
        runner = Runner(tmp_path, server, [pattern], "--shard", shard)
        code, output = await runner.leg(None, 0)
        assert code == 0, output
        accepted.append(runner.final_report()["records_accepted"])
    assert Counter(server.records("interactions")) == Counter(list(origin))
    assert sum(accepted) == len(origin) == 1_800
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "shard-00-of-02",
        "shard-01-of-02",
    ]


async def test_processes_read_objects_and_load_each_once(
    bucket: Any, tmp_path: Path, server: RunningServer
) -> None:
    (tmp_path / "upload").mkdir()
    pattern, origin = upload_logs(bucket, tmp_path, files=4, per_file=500)
    runner = Runner(tmp_path, server, [pattern], "--processes", "2")
    code, output = await runner.leg(None, 0)
    assert code == 0, output
    assert Counter(server.records("interactions")) == Counter(list(origin))
    assert runner.final_report()["records_accepted"] == len(origin) == 2_000
    no_secret_in(output, tmp_path / "state", runner.report)
