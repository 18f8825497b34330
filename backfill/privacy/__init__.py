"""The [privacy] table: pseudonymized ids, truncated IPs and PII scrubbing, on the way to the API.

One more BlockTransform, after mapping (lines are Miso JSON records by then) and before
batching, so that whatever is validated, sent, dead-lettered or previewed is already clean:

    read_blocks -> [MappingTransform | IdLines] -> PrivacyTransform -> batching

For an upload of interactions the step also validates (`PrivacyTransform.validate_with`, as
the engine wires it): the validator's decode of each record serves both, the ids and the IP
are read from the decoded record and replaced in the line's bytes, and each line is judged as
it will be sent. Most records carry no PII, so a block is searched *as bytes* first: only
lines where a cheap candidate pattern matches (`@`, `%40`, long digit runs shaped like a phone
or a card) are decoded, scanned string by string, and encoded again. A line whose bytes cannot
be trusted to say where a pair is (escapes, a name given twice) is decoded and encoded whole.

    settings   the [privacy] table, the hash key
    detect     PII patterns, their bytes pre-filter, redaction, IP truncation
    rewrite    id and IP values replaced inside JSON lines
    transform  the BlockTransform and its counts
"""

from backfill.privacy.detect import (
    candidate_offsets,
    find_pii,
    luhn,
    maybe_pii,
    redact_text,
    scrub,
    truncate_ip,
)
from backfill.privacy.rewrite import KeyRewriter
from backfill.privacy.settings import HashKey, PrivacySettings, load_hash_key, parse_privacy
from backfill.privacy.transform import (
    HASHED_IDS_NOTE,
    PrivacyCounts,
    PrivacyTransform,
    build_privacy,
    hashes_deleted_ids,
    ids_to_delete,
)

__all__ = [
    "HASHED_IDS_NOTE",
    "HashKey",
    "KeyRewriter",
    "PrivacyCounts",
    "PrivacySettings",
    "PrivacyTransform",
    "build_privacy",
    "candidate_offsets",
    "find_pii",
    "hashes_deleted_ids",
    "ids_to_delete",
    "load_hash_key",
    "luhn",
    "maybe_pii",
    "parse_privacy",
    "redact_text",
    "scrub",
    "truncate_ip",
]
