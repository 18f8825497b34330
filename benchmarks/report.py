"""What a section found, as data (latest.json) and as Markdown (latest.md and stdout)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Check:
    """One target of the issue and what this run measured against it."""

    target: str
    measured: str
    passed: bool | None  # None: not measured in this run (say why in `measured`)


@dataclass(slots=True)
class Section:
    key: str
    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; numbers right-aligned, so it also reads well as plain text."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    right = [all(_numeric(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else ("-" * (w + 2))
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def _numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace(".", "").replace("x", "").replace("%", "").lstrip("-")
    return stripped.isdigit() or text == "-"


def checks_table(sections: Sequence[Section]) -> str:
    rows = []
    for s in sections:
        for c in s.checks:
            verdict = "not measured" if c.passed is None else ("PASS" if c.passed else "FAIL")
            rows.append((c.target, c.measured, verdict))
    return table(["target", "measured", "verdict"], rows)


def environment(quick: bool) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def render(sections: Sequence[Section], env: dict[str, Any], figures: Sequence[str]) -> str:
    mode = "make bench-quick (BENCH_QUICK=1)" if env["quick"] else "make bench"
    head = [
        "# backfill benchmarks: latest run",
        "",
        f"`{mode}` on {env['when']}, Python {env['python']}, {env['cpus']} CPUs "
        f"(load average at start {_load(env)}). The embedded server (`--store null "
        "--no-validate`) runs on the same machine and shares its cores.",
        "",
        "## Targets",
        "",
        *(
            [
                "Quick run: the inputs are too small for the rate, ratio, latency and resume "
                "targets (interpreter start-up dominates); these verdicts are indicative only, "
                "judge them with `make bench`.",
                "",
            ]
            if env["quick"]
            else []
        ),
        checks_table(sections),
    ]
    body = [f"\n## {s.title}\n\n{s.markdown}\n\n_({s.seconds:.0f} s)_" for s in sections]
    pictures = [f"\n![{name}]({name})" for name in figures]
    return "\n".join(head + body + pictures) + "\n"


def _load(env: dict[str, Any]) -> str:
    load = env.get("load_average_at_start")
    return "n/a" if not load else f"{load[0]:.2f}"


def write(
    results: Path, sections: Sequence[Section], env: dict[str, Any], figures: Sequence[str]
) -> None:
    results.mkdir(parents=True, exist_ok=True)
    document = {
        "environment": env,
        "sections": {
            s.key: {"title": s.title, "seconds": round(s.seconds, 1), **s.data} for s in sections
        },
        "checks": [asdict(c) for s in sections for c in s.checks],
    }
    _atomic(results / "latest.json", json.dumps(document, indent=2, default=str) + "\n")
    _atomic(results / "latest.md", render(sections, env, figures))


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
