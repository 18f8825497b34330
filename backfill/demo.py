"""`make demo`: the whole product on one machine, no account, no data of your own.

1. generate three months of realistic logs (with a sprinkle of the defects real logs have);
2. start the embedded Miso server on a free loopback port (SQLite storage);
3. run the backfill with live progress, interrupt it part-way with SIGINT, resume it;
4. print the report next to the server's own counts, and exit 0 only if every valid record
   arrived exactly once and every invalid one is in the dead-letter file.

Everything runs as real subprocesses with the `backfill` command, as a user would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from backfill.generate import GenerateConfig, GenerateSummary, generate, load_manifest

WORKDIR = Path(os.environ.get("DEMO_DIR", "demo-data"))
RECORDS = int(os.environ.get("DEMO_RECORDS", "1000000"))
BAD_FRACTION = float(os.environ.get("DEMO_BAD_FRACTION", "0.001"))
INTERRUPT_AT = 0.4  # share of the records accepted when the demo presses Ctrl-C


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def backfill(*args: str) -> list[str]:
    return [sys.executable, "-m", "backfill", *args]


def logs() -> GenerateSummary:
    data = WORKDIR / "logs"
    manifest = data / "manifest.json"
    if manifest.exists():
        summary = load_manifest(data)
        if summary.records == RECORDS and summary.bad_fraction == BAD_FRACTION:
            say(f"reusing {RECORDS:,} generated records in {data}")
            return summary
    say(f"generating 90 days of logs, {RECORDS:,} interactions, in {data}")
    started = time.monotonic()
    config = GenerateConfig(
        out=str(data), days=90, records=RECORDS, seed=7, bad_fraction=BAD_FRACTION
    )
    summary = generate(config)
    seconds = time.monotonic() - started
    print(f"{len(summary.files)} files, {summary.bytes / 1e6:.1f} MB in {seconds:.1f} s")
    return summary


class Server:
    def __init__(self, db: Path, key: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            backfill("serve", "--port", "0", "--db", str(db), "--secret-key", key),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"the server did not start: {line}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        print(line.strip())

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_admin/stats", timeout=30) as resp:
            result: dict[str, Any] = json.load(resp)
            return result

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def run_interrupted(cmd: list[str], env: dict[str, str], server: Server, target: int) -> int:
    proc = subprocess.Popen(cmd, env=env)
    while proc.poll() is None:
        if server.stats()["interactions"]["total"] >= target:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    return proc.wait()


def expected(summary: GenerateSummary) -> tuple[int, int]:
    """(valid records a reader can recover, records that must be dead-lettered)."""
    files = [f for f in summary.files if f.kind == "interactions"]
    valid = sum(f.valid if f.recoverable_valid is None else f.recoverable_valid for f in files)
    return valid, sum(f.records for f in files) - sum(f.valid for f in files)


def compare(
    report: dict[str, Any], stats: dict[str, Any], summary: GenerateSummary, dead: int
) -> bool:
    valid, _ = expected(summary)
    stored = stats["interactions"]["total"]
    rows = [
        ("valid records in the logs", valid, "records stored by the server", stored),
        (
            "records accepted (report)",
            report["records_accepted"],
            "exact duplicates stored",
            stats["interactions"]["duplicates"],
        ),
        ("invalid records (report)", report["records_invalid"], "dead-letter entries", dead),
    ]
    say("report next to the server's own counts")
    for left, a, right, b in rows:
        print(f"  {left:<28}{a:>12,}   {right:<30}{b:>12,}")
    exactly_once: bool = stored == valid == report["records_accepted"]
    no_duplicates: bool = stats["interactions"]["duplicates"] == 0
    all_dead_lettered: bool = (
        dead == report["records_invalid"] + report["records_rejected_by_server"]
    )
    return exactly_once and no_duplicates and all_dead_lettered


def main() -> int:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    summary = logs()
    key = secrets.token_urlsafe(16)
    state = WORKDIR / "state"
    report_file = WORKDIR / "report.json"
    say("starting the embedded Miso server (SQLite storage)")
    server = Server(WORKDIR / "miso-local.db", key)
    try:
        env = {**os.environ, "MISO_API_KEY": key}
        cmd = backfill(
            "run", str(WORKDIR / "logs" / "interactions-*"), "--endpoint", server.url,
            "--state-dir", str(state), "--report", str(report_file), "--restart", "--yes",
        )  # fmt: skip
        valid, _ = expected(summary)
        say(f"backfill run ... (the demo presses Ctrl-C at about {INTERRUPT_AT:.0%})")
        code = run_interrupted(cmd, env, server, int(valid * INTERRUPT_AT))
        print(f"(exit code {code})")
        say("the same command again: it resumes where it stopped")
        resume = [a for a in cmd if a not in ("--restart", "--yes")]
        code = subprocess.run(resume, env=env, check=False).returncode
        if code != 0:
            print(f"backfill exited {code}")
            return 1
        say("backfill status")
        subprocess.run(backfill("status", "--state-dir", str(state)), check=False)
        report = json.loads(report_file.read_text())
        dead_file = Path(report["dead_letter"])
        dead = sum(1 for _ in dead_file.open()) if dead_file.exists() else 0
        ok = compare(report, server.stats(), summary, dead)
    finally:
        server.stop()
    if ok:
        say("every valid record arrived exactly once; every invalid one is in the dead-letter file")
        print(f"  dead letters: {dead_file}\n  server data:  {WORKDIR / 'miso-local.db'} (SQLite)")
        return 0
    say("MISMATCH: see above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
