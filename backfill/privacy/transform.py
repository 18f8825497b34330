"""The privacy step as a BlockTransform, and what it counts for the run's report."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from backfill.errors import UsageError
from backfill.privacy.detect import candidate_offsets, redact_text, scrub, truncate_ip
from backfill.privacy.rewrite import IdFields, KeyRewriter, Swaps, Unusual, swap_value
from backfill.privacy.settings import HashKey, PiiMode, PrivacySettings, load_hash_key
from backfill.schema import Kind
from backfill.sources import Block, Source

HASHABLE: Final[dict[str, frozenset[str]]] = {
    "interactions": frozenset({"user_id", "anonymous_id"}),
    "users": frozenset({"user_id"}),
    "products": frozenset(),
}
# Fields whose value is an identity: a placeholder there would merge every user into one.
ID_PATHS: Final = frozenset(
    {"user_id", "anonymous_id", "product_id", "product_ids[]", "product_group_ids[]"}
)
# the contract's limits: a longer id stays as it is, for the validator to dead-letter as before
MAX_ID: Final = {"user_id": 512, "anonymous_id": 1024}
_decode: Final = msgspec.json.decode
_encode: Final = msgspec.json.encode


@dataclass(slots=True)
class PrivacyCounts:
    """What the step did, for the run's report (this leg's lines only)."""

    ids_hashed: int = 0
    ips_truncated: int = 0
    records_redacted: int = 0
    records_dead_lettered: int = 0
    findings: Counter[str] = field(default_factory=Counter)  # "email@search.keywords": n

    def report(self) -> dict[str, Any]:
        return {
            "ids_hashed": self.ids_hashed,
            "ips_truncated": self.ips_truncated,
            "pii_records_redacted": self.records_redacted,
            "pii_records_dead_lettered": self.records_dead_lettered,
            "pii_findings": dict(sorted(self.findings.items())),
        }


def build_privacy(
    settings: PrivacySettings | None,
    kind: Kind,
    operation: Literal["upload", "delete"] = "upload",
    environ: dict[str, str] | None = None,
) -> PrivacyTransform | None:
    """The step for a run, None when it has nothing to do; a missing key raises UsageError."""
    if settings is None or not settings.active:
        return None
    transform = PrivacyTransform(settings, load_hash_key(settings, environ), kind, operation)
    return transform if transform.does_something else None


class PrivacyTransform:
    """A BlockTransform: rewrites ids and IPs in place, scans candidate lines for PII."""

    def __init__(
        self,
        settings: PrivacySettings,
        key: HashKey | None,
        kind: Kind,
        operation: Literal["upload", "delete"] = "upload",
    ) -> None:
        upload = operation == "upload"
        fields = [f for f in settings.hash_ids if f in HASHABLE[kind]]
        if not upload:  # a delete's ids are user ids (delete users, delete interactions)
            fields = ["user_id"] if "user_id" in fields else []
        if fields and key is None:
            raise UsageError("[privacy] hash_ids needs a key (see load_hash_key)")
        self.key = key
        self.delete = not upload
        self.fields = fields
        self.pii: PiiMode = settings.pii if upload else "off"
        self.truncate = settings.truncate_ip and upload and kind == "interactions"
        self.counts = PrivacyCounts()
        self._ids = KeyRewriter(fields, self._hash_value) if fields and upload else None
        self._ips = KeyRewriter(["truncated_ip"], self._truncate_value)
        self._decode_fields = msgspec.json.Decoder(IdFields).decode
        pseudonym = key.hash if key is not None else str
        self._user_swaps = Swaps("user_id", pseudonym)
        self._anonymous_swaps = Swaps("anonymous_id", pseudonym)
        self._ip_swaps = Swaps("truncated_ip", truncate_ip)
        self._hash_user = "user_id" in fields and upload
        self._hash_anonymous = "anonymous_id" in fields and upload
        self._settings = settings

    def fingerprint(self) -> str:
        """The table and the key, for the checkpoint's settings: a resumed load with another
        key or table would send ids that no longer join what earlier legs sent."""
        table = msgspec.json.encode(self._settings, order="sorted")
        key = self.key.fingerprint() if self.key is not None else ""
        return hashlib.sha256(table + key.encode()).hexdigest()[:16]

    def warning(self) -> str | None:
        """In warn mode, the one line that says personal data went out as it was."""
        found = self.counts.findings
        if self.pii != "warn" or not found:
            return None
        kinds = Counter[str]()
        for what, n in found.items():
            kinds[what.partition("@")[0]] += n
        listed = ", ".join(f"{n:,} {kind}" for kind, n in sorted(kinds.items()))
        return (
            f'[privacy] pii = "warn": personal data found and sent as it was ({listed}; by '
            'field in the report\'s "privacy"); set pii = "redact" to keep it from Miso'
        )

    @property
    def does_something(self) -> bool:
        return bool(self.fields) or self.truncate or self.pii != "off"

    async def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        async for block in blocks:
            self.apply(block)
            yield block

    def apply(self, block: Block) -> None:
        """Rewrites the block in place, through its methods (replace, reject)."""
        if self.delete:
            self._hash_bare_ids(block)
            return
        if block.problems and (self._ids is not None or self.pii in ("redact", "dead-letter")):
            self._clean_problems(block)
        slots = self._candidates(b"\n".join(block.lines)) if self.pii != "off" else []
        if self._ids is not None or self.truncate:
            self._rewrite(block)
        for slot in slots:
            self._scan(block, slot)

    # -- ids and IPs ----------------------------------------------------------------------

    def _rewrite(self, block: Block) -> None:
        """Ids and IPs, line by line: one msgspec decode of just those fields, then a bytes
        replace of `"field":value`; a value spelled another way (escapes) is re-encoded."""
        lines, replace, decode = block.lines, block.replace, self._decode_fields
        hash_user, hash_anonymous, truncate = self._hash_user, self._hash_anonymous, self.truncate
        users, visitors, ips = self._user_swaps, self._anonymous_swaps, self._ip_swaps
        hashed = truncated = 0
        for i, line in enumerate(lines):
            if not line:
                continue
            try:
                found = decode(line)
                new, ids, ip_done = line, 0, False
                value = found.user_id
                if value and hash_user and len(value) <= 512:
                    new = _swap(new, users[value])
                    ids += 1
                value = found.anonymous_id
                if value and hash_anonymous and len(value) <= 1024:
                    new = _swap(new, visitors[value])
                    ids += 1
                context = found.context
                ip = context.truncated_ip if truncate and context is not None else None
                if ip and (ip[-2:] != ".0" or ":" in ip):  # an IPv4 /24 already: no entry
                    swap = ips[ip]
                    new = swap_value(new, swap)
                    ip_done = swap[2] is not None
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, Unusual):
                new = self._by_record(line)  # counts what it rewrites itself
            else:  # counted only here: a line that fell back above is not counted twice
                hashed += ids
                truncated += ip_done
            if new is not line:
                replace(i, new)
        self.counts.ids_hashed += hashed
        self.counts.ips_truncated += truncated

    def _by_record(self, line: bytes) -> bytes:
        """The whole record decoded, its top-level ids and context IP rewritten, encoded
        again; a line that is not JSON (a dead letter to be) gets the regex, best effort."""
        try:
            record = _decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return self._by_regex(line)
        if type(record) is not dict:
            return line
        changed = 0
        for name in self.fields:
            value = record.get(name)
            if type(value) is str and 0 < len(value) <= MAX_ID[name]:
                record[name] = self._user_swaps.compute(value)
                self.counts.ids_hashed += 1
                changed += 1
        context = record.get("context")
        ip = context.get("truncated_ip") if self.truncate and type(context) is dict else None
        if type(ip) is str and (short := truncate_ip(ip)) != ip:
            context["truncated_ip"] = short  # type: ignore[index]
            self.counts.ips_truncated += 1
            changed += 1
        return _encode(record) if changed else line

    def _by_regex(self, line: bytes) -> bytes:
        if self._ids is not None:
            line, n = self._ids(line)
            self.counts.ids_hashed += n
        if self.truncate:
            line, n = self._ips(line)
            self.counts.ips_truncated += n
        return line

    def _hash_value(self, raw: bytes) -> bytes | None:
        assert self.key is not None
        hashed = self.key.hash_json(raw)
        return None if hashed == raw else hashed

    def _truncate_value(self, raw: bytes) -> bytes | None:
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return None
        short = truncate_ip(text)
        return None if short == text else short.encode()

    def _hash_bare_ids(self, block: Block) -> None:
        """Delete ids, as IdLines leaves them (JSON strings): hashed so they hit the records
        that were loaded hashed."""
        if self.key is None:
            return
        for i, line in enumerate(block.lines):
            if len(line) >= 2 and line[0] == 34 and line[-1] == 34:  # '"'
                hashed = self.key.hash_json(line[1:-1])
                if hashed is not None and hashed != line[1:-1]:
                    block.replace(i, b'"%s"' % hashed)
                    self.counts.ids_hashed += 1

    # -- PII ------------------------------------------------------------------------------

    @staticmethod
    def _candidates(joined: bytes) -> list[int]:
        """Slots of the lines where the bytes pre-filter matches (a superset of PII)."""
        slots: set[int] = set()
        line = previous = 0
        for pos in sorted(candidate_offsets(joined)):
            line += joined.count(b"\n", previous, pos)
            previous = pos
            slots.add(line)
        return sorted(slots)

    def _scan(self, block: Block, slot: int) -> None:
        raw = block.lines[slot]
        redact = self.pii != "warn"
        found: list[tuple[str, str]] = []
        try:
            clean = scrub(_decode(raw), "", found, redact)
        except (msgspec.DecodeError, UnicodeDecodeError):  # a dead letter to be: keep PII out
            text, kinds = redact_text(raw.decode("utf-8", "surrogateescape"))
            found = [(kind, "(malformed line)") for kind in kinds]
            clean = None
            if kinds and redact:
                block.replace(slot, text.encode("utf-8", "surrogateescape"))
        if not found:
            return
        self.counts.findings.update(f"{kind}@{path}" for kind, path in found)
        if self.pii == "warn" or clean is None:
            return
        where = ", ".join(sorted({f"{kind} in {path}" for kind, path in found}))
        in_id = sorted({path for _, path in found if path in ID_PATHS})
        if self.pii == "dead-letter" or in_id:
            reason = (
                f"personal data in an id ({where}): an id cannot be redacted without merging "
                f"records; hash it ([privacy] hash_ids) or map it away"
                if self.pii == "redact"
                else f'personal data ({where}); [privacy] pii = "dead-letter" keeps it from Miso'
            )
            block.reject(slot, reason, _encode(clean))
            self.counts.records_dead_lettered += 1
            return
        block.replace(slot, _encode(clean))
        self.counts.records_redacted += 1

    def _clean_problems(self, block: Block) -> None:
        """Lines already refused upstream go to the dead-letter file as they were read: hash
        their ids and redact their PII there too (best effort: they are not valid JSON)."""
        for index, problem in block.problems.items():
            raw = problem.raw
            if not raw:
                continue
            if self._ids is not None:
                raw = self._ids(raw)[0]  # not counted: these lines are never sent
            if self.pii in ("redact", "dead-letter") and candidate_offsets(raw):
                text, _ = redact_text(raw.decode("utf-8", "surrogateescape"))
                raw = text.encode("utf-8", "surrogateescape")
            if raw is not problem.raw:
                block.problems[index] = problem._replace(raw=raw)


def _swap(line: bytes, swap: tuple[bytes, bytes, bytes | None]) -> bytes:
    """swap_value for a value that always changes (a hash): the common spelling costs one
    scan of the line, not two."""
    old, _, replacement = swap
    if replacement is None:
        return line
    new = line.replace(old, replacement)
    return swap_value(line, swap) if new is line else new
