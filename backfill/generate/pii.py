"""Personal data as real logs leak it, mixed into valid lines (`--pii-rate`), each one tagged.

A tag is `kind@field` (`email@search.keywords`), the very key the privacy step counts its
findings under, so a test can compare the manifest with what a scan finds. A line with PII
stays a valid record: the PII sits where Miso's schema allows any string (search keywords,
custom_context values, the query string of the page URL).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import msgspec

from backfill.generate.gaps import GapStream

FIRST: Final = ("ana", "bob", "chen", "dara", "emil", "fatima", "gus", "hana", "ivan", "jo")
LAST: Final = ("smith", "garcia", "muller", "rossi", "tanaka", "okafor", "dubois", "novak")
DOMAINS: Final = ("example.com", "mail.example.org", "example.co.uk", "example.de")


def email(rng: random.Random) -> str:
    sep = rng.choice((".", "_", ""))
    return f"{rng.choice(FIRST)}{sep}{rng.choice(LAST)}{rng.randrange(100)}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random) -> str:
    """A phone number in one of the ways people type them (US, UK, German)."""
    n = rng.randrange(10_000)
    style = rng.randrange(5)
    if style == 0:
        return f"+1 415 555 {n:04d}"
    if style == 1:
        return f"(212) 555-{n:04d}"
    if style == 2:
        return f"+44 20 7946 {n:04d}"
    if style == 3:
        return f"020 7946 {n:04d}"
    return f"+49151{rng.randrange(10**8):08d}"


def card(rng: random.Random) -> str:
    """A Visa-like number that passes the Luhn check, spaced, dashed or in one run."""
    body = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(d if i % 2 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(body[::-1]))
    digits = "".join(map(str, body)) + str((10 - total % 10) % 10)
    sep = rng.choice((" ", "-", ""))
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


def _custom(record: dict[str, Any], key: str, value: str) -> None:
    context = record.setdefault("context", {})
    context.setdefault("custom_context", {})[key] = value


def leak(record: dict[str, Any], rng: random.Random) -> str:
    """Puts one piece of PII into the record; returns its tag."""
    choices: list[Callable[[], str]] = [
        lambda: _put(record, "email", "context.custom_context.email", email(rng)),
        lambda: _put(record, "phone", "context.custom_context.phone", phone(rng)),
        lambda: _put(record, "card", "context.custom_context.note", f"paid with {card(rng)}"),
    ]
    page = record.get("context", {}).get("page")
    if page and "url" in page:
        choices.append(lambda: _in_url(page, rng))
    if record.get("type") == "search":
        choices.append(lambda: _in_search(record, rng))
    return rng.choice(choices)()


def _put(record: dict[str, Any], kind: str, path: str, value: str) -> str:
    _custom(record, path.rsplit(".", 1)[1], value)
    return f"{kind}@{path}"


def _in_url(page: dict[str, Any], rng: random.Random) -> str:
    url: str = page["url"]
    page["url"] = f"{url}{'&' if '?' in url else '?'}email={quote(email(rng), safe='')}"
    return "email@context.page.url"


def _in_search(record: dict[str, Any], rng: random.Random) -> str:
    if rng.random() < 0.5:
        record["search"]["keywords"] = f"order for {email(rng)}"
        return "email@search.keywords"
    record["search"]["keywords"] = f"call me {phone(rng)}"
    return "phone@search.keywords"


class PiiStream(GapStream):
    """Which lines get PII (geometric gaps, as the defect stream), from their own RNG."""

    def apply(self, line: str) -> tuple[str, str]:
        record: dict[str, Any] = msgspec.json.decode(line)
        tag = leak(record, self._rng)
        return msgspec.json.encode(record).decode() + "\n", tag
