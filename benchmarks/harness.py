"""Measuring one contender alone: a subprocess, its own CPU seconds and peak RSS.

Every contender (the engine, each baseline, each ceiling) runs as a child process reaped with
`os.wait4`, so the CPU time is that child's and nobody else's: not the
harness's, not the server's. The embedded server is a subprocess too, started in count-only
mode (`--store null --no-validate`) so that what is measured is the client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
DATA: Final = ROOT / "benchmarks" / ".data"
RESULTS: Final = ROOT / "benchmarks" / "results"
PYTHON: Final = sys.executable
KEY: Final = "bench-secret-key"
SAMPLE_EVERY: Final = 0.05  # seconds between RSS samples and tick callbacks
SERVER_START_TIMEOUT: Final = 30.0
CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BenchError(RuntimeError):
    """A contender or the server did not behave; the message says which and how."""


@dataclass(slots=True)
class Usage:
    """What one child process cost."""

    wall_s: float
    cpu_s: float  # user + system, this child only
    max_rss_mb: float
    exit_code: int
    stdout: str
    stderr: str
    rss_trace: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MB)

    def last_json(self) -> dict[str, Any]:
        """The last stdout line as JSON: how baselines report what they did."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise BenchError(f"no JSON result on stdout; stderr:\n{self.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 1800.0,
    trace_rss: bool = False,
    on_tick: Callable[[subprocess.Popen[bytes], float], None] | None = None,
) -> Usage:
    """Runs `cmd` to completion and returns its own resource usage.

    A waiter thread blocks in `os.wait4` so that the end time is exact; the calling thread
    samples RSS and calls `on_tick(proc, elapsed)` every SAMPLE_EVERY seconds meanwhile.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, cwd=ROOT)
        reaped: list[tuple[int, Any, float]] = []

        def wait() -> None:
            _, status, rusage = os.wait4(proc.pid, 0)
            reaped.append((status, rusage, time.perf_counter()))

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        trace: list[tuple[float, float]] = []
        peak_kb = 0  # the largest VmHWM of the child or any process it started
        while waiter.is_alive():
            peak_kb = max(peak_kb, _tree_high_water_kb(proc.pid))
            elapsed = time.perf_counter() - started
            if elapsed > timeout:
                proc.kill()
                waiter.join()
                raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
            if trace_rss and (rss := _rss_mb(proc.pid)) is not None:
                trace.append((elapsed, rss))
            if on_tick is not None:
                on_tick(proc, elapsed)
            waiter.join(SAMPLE_EVERY)
        status, rusage, ended = reaped[0]
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return Usage(
            wall_s=ended - started,
            cpu_s=rusage.ru_utime + rusage.ru_stime,
            # VmHWM of the process itself: ru_maxrss starts from this harness's own RSS (a
            # vforked child inherits it across exec), so it is only the fallback
            max_rss_mb=(peak_kb or rusage.ru_maxrss) / 1024,  # KiB on Linux
            exit_code=proc.returncode,
            stdout=_read(out),
            stderr=_read(err),
            rss_trace=trace,
        )


def _read(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode("utf-8", "replace")


def _rss_mb(pid: int) -> float | None:
    return (kb / 1024) if (kb := _status_kb(pid, b"VmRSS:")) else None


def _tree_high_water_kb(pid: int) -> int:
    """The largest peak RSS (VmHWM, KiB) of `pid` and its descendants, each on its own."""
    peak, todo = 0, [pid]
    while todo:
        current = todo.pop()
        peak = max(peak, _status_kb(current, b"VmHWM:"))
        try:
            with open(f"/proc/{current}/task/{current}/children", "rb") as fh:
                todo.extend(int(child) for child in fh.read().split())
        except (OSError, ValueError):
            continue
    return peak


def _status_kb(pid: int, field: bytes) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def cpu_seconds(pid: int) -> float | None:
    """User + system seconds a live process has used so far (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def backfill(*args: str) -> list[str]:
    return [PYTHON, "-m", "backfill", *args]


def module(name: str, *args: str) -> list[str]:
    return [PYTHON, "-m", name, *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MISO_API_KEY": KEY, "PYTHONHASHSEED": "0", **extra}
    env.pop("BENCH_QUICK", None)
    return env


class Server:
    """`backfill serve --store null --no-validate` on a free loopback port, as a subprocess."""

    def __init__(self, *, latency: float = 0.0) -> None:
        cmd = backfill("serve", "--store", "null", "--no-validate", "--port", "0")
        cmd += ["--secret-key", KEY]
        if latency > 0:
            cmd += ["--fault-latency", f"{latency:g}"]
        self.latency = latency
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            self.url = self._announced_url()
            self._wait_ready()
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise

    def _announced_url(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints this line first
        if "listening on " not in line:
            raise BenchError(f"the embedded server did not start: {line.strip()!r}")
        return line.split("listening on ", 1)[1].split()[0]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"the embedded server at {self.url} does not answer") from None
                time.sleep(0.05)

    def _admin(self, path: str, method: str = "GET") -> dict[str, Any]:
        data = b"" if method == "POST" else None
        request = urllib.request.Request(self.url + path, method=method, data=data)
        with urllib.request.urlopen(request, timeout=30) as resp:
            result: dict[str, Any] = json.load(resp)
            return result

    def stats(self) -> dict[str, Any]:
        return self._admin("/_admin/stats")

    def received(self) -> int:
        return int(self.stats()["records_received"])

    def reset(self) -> None:
        self._admin("/_admin/reset", "POST")

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def scratch_dir(prefix: str) -> Path:
    """A fresh directory for a run's state (checkpoint, dead letters, report), on the same
    file system as the data so that checkpoint fsyncs cost what they cost in real use."""
    DATA.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=DATA))


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
