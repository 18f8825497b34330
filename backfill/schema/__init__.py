"""Miso records as msgspec types: the schema *is* the types.

The interaction, product and user records of the Miso Data API contract
(`miso-data-api.openapi.json`, which wins over `miso-api.md` where they disagree) are msgspec
Structs: one closed Struct per interaction type, decoded as a union tagged by `type`. msgspec
decodes and validates a record in one pass in C, which keeps `RecordValidator.check` (called once
per input line) cheap. The few rules msgspec cannot state run in Python: for products and users in
`__post_init__` hooks (a failure still arrives as a `msgspec.ValidationError` with a path); for
interactions, the hot path, right after decoding in `RecordValidator.check` (RFC 3339 timestamp,
IPv4, arrays of one item kind), which spares a Python call per record.

Failures are rare, so only then is the line decoded generically to name the offending value and
to phrase the reason twice: in the user's terms (`RecordValidator.check`) and as Miso's own 422
lines (`miso_error_lines`, used by the embedded server).

Where the vendor file and miso-api.md disagree, the file wins:
- `rating` has no 0..5 bounds in the file;
- `custom_context` values may not be null (the file lists no null type);
- `context`, `context.page`, `context.campaign` and `search` are open objects (no
  `additionalProperties: false`); only the records themselves are closed;
- product dates are a date-time or a date; `url`, `cover_image`, `profile_image` are URIs;
  a user's `age` is JSON Schema's integer (1.0 is one).
The product_id/user_id rules ("," and a leading "_") are not in the file; they come from
miso-api.md because such ids cannot be addressed as `/v1/products/{id}` (`_ids`, `_delete`).
"""

from backfill.schema.explain import invalid_utf8, undecodable
from backfill.schema.formats import parse_timestamp
from backfill.schema.records import (
    DELETE_BATCH,
    INTERACTION_TYPES,
    KINDS,
    MAX_ANONYMOUS_ID,
    MAX_ID,
    Campaign,
    Child,
    Context,
    Interaction,
    KindFacts,
    Location,
    Page,
    Product,
    SearchInformation,
    User,
)
from backfill.schema.rules import (
    MISSING_IDENTITY,
    MISSING_TIMESTAMP,
    OUT_OF_WINDOW,
    Kind,
    RecordInvalid,
    Rules,
)
from backfill.schema.validator import RecordValidator, miso_error_lines, parse_error_index
from backfill.schema.wording import attribute_type

__all__ = [
    "DELETE_BATCH",
    "INTERACTION_TYPES",
    "KINDS",
    "MAX_ANONYMOUS_ID",
    "MAX_ID",
    "MISSING_IDENTITY",
    "MISSING_TIMESTAMP",
    "OUT_OF_WINDOW",
    "Campaign",
    "Child",
    "Context",
    "Interaction",
    "Kind",
    "KindFacts",
    "Location",
    "Page",
    "Product",
    "RecordInvalid",
    "RecordValidator",
    "Rules",
    "SearchInformation",
    "User",
    "attribute_type",
    "invalid_utf8",
    "miso_error_lines",
    "parse_error_index",
    "parse_timestamp",
    "undecodable",
]
