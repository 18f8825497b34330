"""The privacy step as a BlockTransform, and what it counts for the run's report."""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import accumulate
from operator import add
from typing import Any, Final, Literal

import msgspec
from msgspec import UNSET

from backfill.errors import UsageError
from backfill.privacy.detect import (
    candidate_gate,
    candidate_offsets,
    maybe_pii,
    prefilter,
    redact_text,
    scrub,
    truncate_ip,
)
from backfill.privacy.rewrite import (
    CACHE_SIZE,
    Compiled,
    IdFields,
    KeyRewriter,
    Swaps,
    Unusual,
    compiled_rewrite,
    escaped,
    splice,
)
from backfill.privacy.settings import HashKey, PiiMode, PrivacySettings, load_hash_key
from backfill.schema import MAX_ANONYMOUS_ID, MAX_ID, OUT_OF_WINDOW, Kind, RecordValidator
from backfill.sources import Block, Problem, Source

HASHABLE: Final[dict[str, frozenset[str]]] = {
    "interactions": frozenset({"user_id", "anonymous_id"}),
    "users": frozenset({"user_id"}),
    "products": frozenset(),
}
# Fields whose value is an identity: a placeholder there would merge every user into one.
ID_PATHS: Final = frozenset(
    {"user_id", "anonymous_id", "product_id", "product_ids[]", "product_group_ids[]"}
)
# the schema's limits: a longer id stays as it is, for the validator to dead-letter as before
MAX_LENGTH: Final = {"user_id": MAX_ID, "anonymous_id": MAX_ANONYMOUS_ID}
HASHED_IDS_NOTE: Final = (
    "the ids listed are pseudonyms (HMAC-SHA256 with the hash key, as [privacy] hash_ids "
    "loaded them): the ids the delete sends; the raw ids are not printed"
)
BLANK: Final = "blank line"  # what `settled` says of an empty slot (a problem, or blank)
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

    def report(self, leg: int = 1) -> dict[str, Any]:
        """The counts of the lines this leg read (`leg` of the load). They are not in the
        checkpoint: a resumed load's report counts its last leg only (and lines read again
        after an interruption count in both legs), which `counts_cover` says."""
        return {
            "counts_cover": f"this leg only (leg {leg} of the load)",
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


def hashes_deleted_ids(settings: PrivacySettings | None, kind: Kind) -> bool:
    """Whether a delete of `kind` sends pseudonyms for the ids it is given (the table hashes
    user_id: `delete users` and `delete interactions` take user ids)."""
    return settings is not None and "user_id" in settings.hash_ids and "user_id" in HASHABLE[kind]


def ids_to_delete(
    settings: PrivacySettings | None,
    kind: Kind,
    ids: list[str],
    environ: dict[str, str] | None = None,
) -> tuple[list[str], bool]:
    """The ids a delete sends for `ids` (valid ids as given), and whether they are hashed.

    With `hash_ids` on user_id, they are the pseudonyms the records were loaded with, which
    a `delete --dry-run` lists instead of the raw ids the table deems personal data (the
    user has those in the file they gave); a missing key is a UsageError, as for the run."""
    step = build_privacy(settings, kind, "delete", environ)
    if step is None or step.key is None:
        return ids, False
    key = step.key
    return [key.hash(v) if 0 < len(v) <= MAX_ID else v for v in ids], True


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
        self._ids = [  # one per field: each has its length limit
            KeyRewriter([name], self._pseudonym(MAX_LENGTH[name])) for name in fields if upload
        ]
        self._ips = KeyRewriter(["truncated_ip"], _truncated_bytes)
        self._decode_fields = msgspec.json.Decoder(IdFields).decode
        pseudonym = key.hash if key is not None else str
        self._user_swaps = Swaps("user_id", pseudonym)
        self._anonymous_swaps = Swaps("anonymous_id", pseudonym)
        self._ip_swaps = Swaps("truncated_ip", truncate_ip)
        self._hash_user = "user_id" in fields and upload
        self._hash_anonymous = "anonymous_id" in fields and upload
        self._settings = settings
        self._validator: RecordValidator | None = None
        # `candidate_offsets`, or the same marks compiled (backfill[fast]); its own database
        self._offsets = prefilter() if self.pii != "off" else candidate_offsets
        # ids and the IP replaced by the C scanner (`_splice`), when it was built
        self._compiled = compiled_rewrite() if upload and self.does_something else None
        # the scan's per-string gate (the C mark test) and the C pass's caches, when compiled
        self._gate: Callable[[str], bool] | None = None
        self._targets: tuple[tuple[bytes, object, Callable[[bytes], bytes]], ...] = ()
        self._nested: tuple[bytes, bytes, object, Callable[[bytes], bytes]] | None = None
        if self._compiled is not None:
            from backfill.privacy import _splice  # built with the rewrite

            self._gate = _splice.marked
            self._targets = tuple(
                (name.encode(), _splice.cache(CACHE_SIZE), self._pseudonym(MAX_LENGTH[name]))
                for name in fields
            )
            if self.truncate:
                self._nested = (
                    b"context",
                    b"truncated_ip",
                    _splice.cache(CACHE_SIZE),
                    _truncated_bytes,
                )

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

    def validate_with(self, validator: RecordValidator) -> Callable[[bytes], str | None]:
        """Takes over validation, so that one decode of each line serves both: the validator
        decodes the record and the ids are read from it (decoding them again cost half the
        step). Each line is validated as it will be sent (after the step), exactly as before;
        an invalid one becomes a problem of the block (a dead letter with its reason and
        whole line), one outside the time window is filtered, a blank one left empty.

        Returns the check for batching, which then has nothing left to refuse (an upload
        only: a delete's ids keep their own check)."""
        if not self.delete and self._compiled is None:  # compiled: its own pass, then check
            self._validator = validator
        return settled if self._validator is not None else validator.check

    async def blocks(self, source: Source, blocks: AsyncIterator[Block]) -> AsyncIterator[Block]:
        async for block in blocks:
            self.apply(block)
            yield block

    def apply(self, block: Block) -> None:
        """Rewrites the block in place, through its methods (replace, reject)."""
        if self.delete:
            self._hash_bare_ids(block)
            return
        if block.problems and (self._ids or self.pii in ("redact", "dead-letter")):
            self._clean_problems(block)
        if self._compiled is not None:  # one C pass: ids, IP, and the lines to scan
            for slot in self._rewrite_compiled(block, self._compiled):
                self._scan(block, slot)
            return
        joined = b"\n".join(block.lines)
        slots = self._candidates(joined, block.lines) if self.pii != "off" else []
        if self._validator is not None:
            self._validate(block, set(slots), joined)
            for slot in slots:  # ids and IPs, PII, then the verdict on the line as it is now
                if block.lines[slot]:
                    block.replace(slot, self._rewrite_line(block.lines[slot]))
                    self._scan(block, slot)
                    if block.lines[slot]:  # else a dead letter of the scan's
                        self._settle(block, slot, block.lines[slot])
            return
        if self._ids or self.truncate:
            for i, line in enumerate(block.lines):
                if line and (new := self._rewrite_line(line)) is not line:
                    block.replace(i, new)
        for slot in slots:
            self._scan(block, slot)

    # -- ids and IPs ----------------------------------------------------------------------

    def _validate(self, block: Block, flagged: set[int], joined: bytes) -> None:
        """The hot path: each line not flagged for PII is validated (one msgspec decode) and
        its ids are replaced in its bytes from what the validator decoded (`_fast`).

        A line's `"user_id":value` is replaced where it first appears, which is right when
        the name appears once in the line: one count over the whole block (`joined`, the
        lines as they came) checks that for every line at once, instead of a scan of each
        line; a block where it fails is done again line by line (`_splice`). An invalid
        line, or one with `\\u` escapes, is rewritten as before and validated again as it
        will be sent (`_settle`)."""
        block.stored_lengths()  # then lines[i] = new is what Block.replace does
        original = list(block.lines)
        work = original.copy()
        for i in flagged:
            work[i] = b""  # the PII scan's (see apply)
        slow: list[int] = []
        escapes = b"\\" in joined and b"\\u" in joined  # memchr first: most blocks hold none
        hashed, truncated = self._fast(block, work, slow, escapes)
        others = [original[i] for i in (*flagged, *slow) if original[i]]
        if hashed is not None and self._once_each(joined, others, hashed):
            self.counts.ids_hashed += hashed[0] + hashed[1]
            self.counts.ips_truncated += truncated
        else:  # a name twice in some line (a duplicate key, or nested): line by line
            self._line_by_line(block, original, flagged, slow)
        for i in slow:
            self._settle(block, i, self._rewrite_line(original[i]))

    def _fast(
        self, block: Block, work: list[bytes], slow: list[int], escapes: bool
    ) -> tuple[list[int] | None, int]:
        """Validates and rewrites the lines of `work` into `block`; the others go to `slow`.
        Returns ([user_id hashed, anonymous_id hashed, user_id empty, anonymous_id empty],
        IPs truncated), None for the first when a line left midway (its counts are then not
        to be trusted: the block is done again line by line). Every step a line takes costs:
        this loop is most of the step."""
        assert self._validator is not None
        validator, check, lines = self._validator, self._validator.check, block.lines
        user_swaps, visitor_swaps = self._user_swaps, self._anonymous_swaps
        hash_user, hash_anonymous, truncate = self._hash_user, self._hash_anonymous, self.truncate
        users = visitors = empty_users = empty_visitors = truncated = 0
        midway = False
        for i, line in enumerate(work):
            if not line:
                continue
            reason = check(line)
            if (reason is not None and reason is not OUT_OF_WINDOW) or (escapes and escaped(line)):
                slow.append(i)
                continue
            record, new, stage = validator.decoded, line, 0
            try:
                if hash_user:
                    if value := record.user_id:  # the first pair (see _once_each)
                        compact, spaced, replacement, _, _ = user_swaps[value]
                        new = line.replace(compact, replacement, 1)
                        if new is line and (new := line.replace(spaced, replacement, 1)) is line:
                            raise Unusual
                        users += 1
                    elif value is not UNSET:
                        empty_users += 1
                stage = 1
                if hash_anonymous:
                    if value := record.anonymous_id:
                        compact, spaced, replacement, _, _ = visitor_swaps[value]
                        old, new = new, new.replace(compact, replacement, 1)
                        if new is old and (new := old.replace(spaced, replacement, 1)) is old:
                            raise Unusual
                        visitors += 1
                    elif value is not UNSET:
                        empty_visitors += 1
                stage = 2
                if (
                    truncate
                    and (context := record.context)
                    and (ip := context.truncated_ip)
                    and (ip[-1] != "0" or ip[-2] != ".")  # else a /24 already: no entry
                ):
                    swap = self._ip_swaps[ip]
                    new = splice(new, swap)
                    truncated += swap[4]
            except Unusual:  # done again whole; if this pass counted some of it, so is the block
                slow.append(i)
                midway = midway or stage > 0
                continue
            lines[i] = new
            if reason is not None:
                block.filter(i, reason)
        return None if midway else [users, visitors, empty_users, empty_visitors], truncated

    def _once_each(self, joined: bytes, others: list[bytes], counts: list[int]) -> bool:
        """Whether each id name appears exactly once in each fast line that has it (and in
        no other fast line): the block's count equals those lines plus the other lines' own
        (`others`: flagged and slow lines, as they came)."""
        names = [(self._hash_user, b'"user_id"', counts[0] + counts[2])]
        names.append((self._hash_anonymous, b'"anonymous_id"', counts[1] + counts[3]))
        for hashing, token, lines in names:
            if hashing and joined.count(token) != lines + sum(o.count(token) for o in others):
                return False
        return True

    def _line_by_line(
        self, block: Block, original: list[bytes], flagged: set[int], slow: list[int]
    ) -> None:
        """The fast path's ids again, each line checked alone (`_rewrite_line`)."""
        skip = flagged.union(slow)
        for i, line in enumerate(original):
            if line and i not in skip:
                new = self._rewrite_line(line)
                if block.lines[i]:  # else filtered (out of the window): counted all the same
                    block.lines[i] = new

    def _rewrite_compiled(self, block: Block, rewrite: Compiled) -> list[int]:
        """Ids and the IP of every line by the C scanner, which finds the keys where the
        decoder would (top level, and `truncated_ip` directly in `context`) and replaces their
        values in the bytes; a line it cannot be sure of (an escape in a key or an id, a
        name given twice, not one JSON object) is left to `_rewrite_line`. Returns the slots
        whose bytes hold a PII mark (the pre-filter's, on the lines as they came)."""
        block.stored_lengths()  # the lengths as read, before the lines change in place
        changed, unusual, flagged = rewrite(
            block.lines, self._targets, self._nested, self.pii != "off"
        )
        if self._nested is not None:
            self.counts.ips_truncated += changed.pop()
        self.counts.ids_hashed += sum(changed)
        for i in unusual:
            line = block.lines[i]
            if line and (new := self._rewrite_line(line)) is not line:
                block.replace(i, new)
        return flagged

    def _pseudonym(self, limit: int) -> Callable[[bytes], bytes]:
        """A JSON string's content -> its pseudonym (`HashKey.hash_json`); an empty or too
        long id, or one that is not a string's content, stays as it is (the validator judges
        it). For the regex fallback and for the compiled pass's misses alike."""
        assert self.key is not None
        hash_json = self.key.hash_json

        def pseudonym(raw: bytes) -> bytes:
            hashed = hash_json(raw, limit)
            return raw if hashed is None else hashed

        return pseudonym

    def _truncated(self, line: bytes, ip: Any) -> tuple[bytes, bool]:
        if ip and (ip[-2:] != ".0" or ":" in ip):  # an IPv4 /24 already: no entry
            swap = self._ip_swaps[ip]
            return splice(line, swap), swap[4]
        return line, False

    def _splice(self, line: bytes, record: Any) -> tuple[bytes, int, bool]:
        """(the line with the record's ids and IP replaced in its bytes, ids hashed, IP
        truncated); `record` has the fields (a Struct of the schema or IdFields), falsy when
        missing. Unusual when a pair cannot be located in the bytes alone (see `splice`)."""
        new, ids, ip_done = line, 0, False
        if self._hash_user:
            value = record.user_id
            if value and len(value) <= MAX_ID:
                new = splice(new, self._user_swaps[value])
                ids += 1
        if self._hash_anonymous:
            value = record.anonymous_id
            if value and len(value) <= MAX_ANONYMOUS_ID:
                new = splice(new, self._anonymous_swaps[value])
                ids += 1
        if self.truncate and (context := record.context):
            new, ip_done = self._truncated(new, context.truncated_ip)
        return new, ids, ip_done

    def _rewrite_line(self, line: bytes) -> bytes:
        """Ids and IPs of one line: a msgspec decode of just those fields, then `_splice`;
        a line that does not decode so, or whose pairs cannot be located, is decoded whole."""
        try:
            if escaped(line):
                raise Unusual
            new, ids, ip_done = self._splice(line, self._decode_fields(line))
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError, Unusual):
            return self._by_record(line)  # counts what it rewrites itself
        self.counts.ids_hashed += ids  # counted only here: a fallback counts once
        self.counts.ips_truncated += ip_done
        return new

    def _settle(self, block: Block, i: int, line: bytes) -> None:
        """Slot `i` holds `line` if valid, else it becomes what batching would make of it: a
        dead letter with its reason, a filtered record, a blank line."""
        assert self._validator is not None
        reason = self._validator.check(line)
        if reason is None:
            if line is not block.lines[i]:
                block.replace(i, line)
        elif reason is OUT_OF_WINDOW:
            block.filter(i, reason)
        elif line.isspace():
            block.replace(i, b"")
        else:  # the whole line, as batching keeps it for the dead-letter file
            block.problems[block.first + i] = Problem(reason, block.stored_lengths()[i], line)
            block.lines[i] = b""

    def _by_record(self, line: bytes) -> bytes:
        """The whole record decoded, its top-level ids and context IP rewritten, encoded
        again; a line that is not JSON (a dead letter to be) gets the regex, best effort."""
        try:
            record = _decode(line)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return self._by_regex(line)
        if type(record) is not dict:
            return line
        changed = 0
        for name in self.fields:
            value = record.get(name)
            if type(value) is str and 0 < len(value) <= MAX_LENGTH[name]:
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
        for rewriter in self._ids:
            line, n = rewriter(line)
            self.counts.ids_hashed += n
        if self.truncate:
            line, n = self._ips(line)
            self.counts.ips_truncated += n
        return line

    def _hash_bare_ids(self, block: Block) -> None:
        """Delete ids, as IdLines leaves them (JSON strings): hashed so they hit the records
        that were loaded hashed."""
        if self.key is None:
            return
        for i, line in enumerate(block.lines):
            if len(line) >= 2 and line[0] == 34 and line[-1] == 34:  # '"'
                hashed = self.key.hash_json(line[1:-1], MAX_ID)
                if hashed is not None and hashed != line[1:-1]:
                    block.replace(i, b'"%s"' % hashed)
                    self.counts.ids_hashed += 1

    # -- PII ------------------------------------------------------------------------------

    def _candidates(self, joined: bytes, lines: list[bytes]) -> list[int]:
        """Slots of the lines where the bytes pre-filter matches (a superset of PII); the
        offsets in `joined` (the lines and a newline each) found by bisection of the lines'
        starting offsets, taken in C (counting newlines cost a pass over the block)."""
        offsets = self._offsets(joined)
        if not offsets:
            return []
        starts = list(map(add, accumulate(map(len, lines), initial=0), range(len(lines) + 1)))
        return sorted({bisect_right(starts, pos) - 1 for pos in offsets})

    def _scan(self, block: Block, slot: int) -> None:
        raw = block.lines[slot]
        redact = self.pii != "warn"
        found: list[tuple[str, str]] = []
        # the line's marks (when its strings are its bytes), or each string's own
        gate = self._gate or candidate_gate(raw) or maybe_pii
        try:
            clean = scrub(_decode(raw), "", found, redact, gate)
        # a dead letter to be (not JSON, or nested too deeply to decode): keep PII out
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
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
            for rewriter in self._ids:  # not counted: these lines are never sent
                raw = rewriter(raw)[0]
            if self.pii in ("redact", "dead-letter") and self._offsets(raw):
                text, _ = redact_text(raw.decode("utf-8", "surrogateescape"))
                raw = text.encode("utf-8", "surrogateescape")
            if raw is not problem.raw:
                block.problems[index] = problem._replace(raw=raw)


def _truncated_bytes(raw: bytes) -> bytes:
    """A `truncated_ip` string's content, truncated (`truncate_ip`); as it is when it is not
    an address or not UTF-8 (the validator judges it). For the regex fallback and for the
    compiled pass's misses alike."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return raw
    short = truncate_ip(text)
    return raw if short == text else short.encode()


def settled(line: bytes) -> str | None:
    """Batching's check after `PrivacyTransform.validate_with`: every line the step left is
    valid; an empty slot is a problem of the block or a blank line."""
    return None if line else BLANK
