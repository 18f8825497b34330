"""Why a whole input was refused, guessed from its first invalid lines, in the user's words.

An input where (nearly) every record is invalid is rarely bad data: it is a file of another
shape (one JSON document instead of JSON lines) or records of another kind (interactions
sent with `--kind products`). Saying which saves the user from reading the dead letters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import msgspec

from backfill.schema import INTERACTION_TYPES

SAMPLES = 20  # invalid lines kept per leg to guess from


def hint(kind: str, samples: Iterable[bytes], *, mapped: bool = False) -> str:
    """One sentence (or "") that names the likely cause."""
    lines = [raw.lstrip(b"\xef\xbb\xbf \t\r") for raw in samples]
    if lines and (lines[0].startswith(b"[") or lines[0].rstrip() == b"{"):
        return (
            "this looks like one JSON document (an array or a pretty-printed object), not JSON "
            "lines: put one record per line, e.g. `jq -c '.[]' FILE > FILE.jsonl`"
        )
    if mapped:
        return "check the [mapping] of the config file against these lines (backfill preview)"
    guessed = _kind_of(lines)
    if guessed is not None and guessed != kind:
        return f"these records look like {guessed}, not {kind}: use --kind {guessed}"
    if kind == "interactions" and guessed is None:
        return "these are not Miso records: logs of another shape need a [mapping]"
    return ""


def _kind_of(lines: list[bytes]) -> str | None:
    """The kind most of the lines look like, by their identifying fields."""
    votes: Counter[str] = Counter()
    for raw in lines:
        try:
            record = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("type")
        if isinstance(kind, str) and kind in INTERACTION_TYPES:
            votes["interactions"] += 1
        elif "product_id" in record:
            votes["products"] += 1
        elif "user_id" in record and "type" not in record:
            votes["users"] += 1
    if not votes:
        return None
    guessed, count = votes.most_common(1)[0]
    return guessed if count * 2 > len(lines) else None
