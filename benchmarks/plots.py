"""The two figures: latency scaling (latency.png) and memory (memory.png).

matplotlib is a benchmark-only extra; without it the numbers are still written and the
figures are skipped with a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency(data: dict[str, Any], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red"]
    for color, (lat, points) in zip(colors, data["curves"].items(), strict=False):
        xs = [p["concurrency"] for p in points]
        ax.plot(
            xs, [p["records_per_s"] for p in points], "o-", color=color, label=f"measured, {lat} s"
        )
        if float(lat) > 0:
            ideal = [p["ideal_records_per_s"] for p in points]
            ax.plot(xs, ideal, "--", color=color, alpha=0.6, label=f"ideal, {lat} s")
    ax.axhline(data["cpu_limit"], color="black", linestyle=":", label="CPU limit (0 s, best)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("records/s")
    ax.set_title(f"Throughput vs concurrency, batch {data['batch_size']:,}, injected latency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def memory(data: dict[str, Any], out: Path, limit_mb: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in data["runs"]:
        trace = run["rss_trace"]
        if not trace:
            continue
        end = trace[-1][0] or 1.0
        ax.plot(
            [t / end * 100 for t, _ in trace],
            [mb for _, mb in trace],
            label=f"{run['records']:,} records (peak {run['peak_rss_mb']:.0f} MB)",
        )
    ax.axhline(limit_mb, color="red", linestyle=":", label=f"target: under {limit_mb:.0f} MB")
    ax.set_xlabel("share of the run (%)")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.set_title("Engine resident memory during a run")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
