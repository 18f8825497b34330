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

from __future__ import annotations

import functools
import json
import operator
import re
import types
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple, Union, get_args, get_origin

import msgspec
import msgspec.inspect as mi
from msgspec import UNSET, Meta, UnsetType

__all__ = [
    "INTERACTION_TYPES",
    "MISSING_IDENTITY",
    "MISSING_TIMESTAMP",
    "OUT_OF_WINDOW",
    "Campaign",
    "Context",
    "Interaction",
    "Kind",
    "Page",
    "Product",
    "RecordInvalid",
    "RecordValidator",
    "Rules",
    "SearchInformation",
    "User",
    "invalid_utf8",
    "miso_error_lines",
    "parse_error_index",
    "parse_timestamp",
    "undecodable",
]

Kind = Literal["interactions", "products", "users"]

# Returned by RecordValidator.check for a valid record outside the --since/--until window:
# such a record is filtered (counted, not dead-lettered). Compare with `is`.
OUT_OF_WINDOW: Final = "outside the --since/--until time window"
MISSING_TIMESTAMP: Final = "missing timestamp (--allow-missing-timestamp relaxes this rule)"
MISSING_IDENTITY: Final = (
    "missing user identity: user_id or anonymous_id is required "
    "(--allow-anonymous relaxes this rule)"
)


class Rules(msgspec.Struct, frozen=True):
    """Backfill rules on top of the contract's schema (each can be relaxed by a flag)."""

    require_timestamp: bool = True
    require_identity: bool = True  # user_id or anonymous_id
    since: datetime | None = None  # inclusive, tz-aware
    until: datetime | None = None  # exclusive, tz-aware


class RecordInvalid(ValueError):
    """A record failed validation; str(exc) is the reason in the user's terms."""


class _FieldError(ValueError):
    """Raised by `__post_init__` hooks; msgspec chains it as the ValidationError's cause.

    It carries what the hook knows and msgspec's path does not: the field below the Struct,
    the user-facing expectation and Miso's message.
    """

    def __init__(self, subpath: tuple[str, ...], expected: str, miso: str) -> None:
        super().__init__(f"expected {expected}")
        self.subpath = subpath
        self.expected = expected
        self.miso = miso


# ---------------------------------------------------------------------------------------------
# Formats msgspec cannot state: RFC 3339 date-time, date, IPv4, URI, homogeneous arrays.
# ---------------------------------------------------------------------------------------------

_DATE_TIME: Final = "an ISO 8601 date-time with a time zone"
_DATE_TIME_MISO: Final = "The attribute should match the 'date-time' format."
# Checked by RecordValidator (see parse_timestamp); the length rules out short texts in C.
_Timestamp = Annotated[
    str, Meta(min_length=20, extra={"expected": _DATE_TIME, "miso": _DATE_TIME_MISO})
]
_encode = msgspec.json.encode
_decode_aware_datetime = msgspec.json.Decoder(Annotated[datetime, Meta(tz=True)]).decode
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f]*")


def parse_timestamp(text: str) -> datetime | None:
    """The aware datetime of an RFC 3339 date-time (JSON Schema's `date-time`), else None.

    msgspec's parser is fast and calendar-exact but also takes a space separator and "+HHMM"
    offsets, which RFC 3339 rejects: the shape test first rules those out (and is cheaper).
    """
    if len(text) < 20 or text[10] not in "Tt" or (text[-1] not in "Zz" and text[-3] != ":"):
        return None
    try:
        when: datetime = _decode_aware_datetime(_encode(text))
    except msgspec.ValidationError:
        return _leap_second(text)
    return when


_LEAP: Final = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:)60(\.[0-9]+)?")


def _leap_second(text: str) -> datetime | None:
    """RFC 3339 allows second 60, a leap second, which falls at 23:59:60 UTC (15:59:60-08:00).

    Neither msgspec nor datetime can hold it: the moment returned is the second before it
    (for --since/--until). Reached only when the fast parse failed."""
    leap = _LEAP.match(text)
    if leap is None:
        return None
    try:
        when: datetime = _decode_aware_datetime(_encode(f"{leap[1]}59{text[leap.end(1) + 2 :]}"))
        utc = when.astimezone(UTC)
    except (msgspec.ValidationError, OverflowError):
        return None
    return when if (utc.hour, utc.minute) == (23, 59) else None


def _is_date_or_date_time(text: str) -> bool:
    if parse_timestamp(text) is not None:
        return True
    if _DATE.fullmatch(text) is None:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# JSON Schema's ipv4: four decimal octets, no leading zeros; one C-level match (hot path)
_is_ipv4: Final = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}").fullmatch


def _is_mixed(items: list[Any]) -> bool:
    """JSON Schema's anyOf [number[], string[], object[]]: one item kind per array."""
    return len({dict if type(i) is dict else str if type(i) is str else float for i in items}) > 1


def _mixed_key(attributes: Mapping[str, Any]) -> str | None:
    """The first key whose array mixes numbers, strings and objects."""
    for key, value in attributes.items():
        if type(value) is list and len(value) > 1 and _is_mixed(value):
            return key
    return None


_MIXED: Final = "an array of numbers, an array of strings or an array of objects (not a mix)"
_MIXED_MISO: Final = "Failed to match at least one schema."


def _check_arrays(attributes: Mapping[str, Any], field: str) -> None:
    key = _mixed_key(attributes)
    if key is not None:
        raise _FieldError((field, key), _MIXED, _MIXED_MISO)


# ---------------------------------------------------------------------------------------------
# Interaction records: a closed Struct per type, tagged by `type`.
# ---------------------------------------------------------------------------------------------

MAX_ID: Final = 512  # characters of a product or user id
MAX_ANONYMOUS_ID: Final = 1024  # characters of an interaction's anonymous_id
_Str512 = Annotated[str, Meta(max_length=MAX_ID)]
_Str1024 = Annotated[str, Meta(max_length=MAX_ANONYMOUS_ID)]
_Uuid = Annotated[
    str,
    Meta(
        pattern=r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z",
        extra={"expected": "a UUID", "miso": "The attribute should match the 'uuid' format."},
    ),
]
_Scalar = str | int | float | bool
_FlatObject = dict[str, _Scalar]
_ATTRIBUTE = "a boolean, a number, a string, or an array of numbers, of strings or of objects"
_Attribute = Annotated[
    bool | int | float | str | list[int | float | str | _FlatObject],
    Meta(extra={"expected": _ATTRIBUTE}),
]


class _Open(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Nested objects the file leaves open: unknown keys are ignored, not rejected."""


class Campaign(_Open):
    name: str | UnsetType = UNSET
    source: str | UnsetType = UNSET
    medium: str | UnsetType = UNSET
    term: str | UnsetType = UNSET
    content: str | UnsetType = UNSET


class Page(_Open):
    url: str  # required when page is given
    referrer: str | UnsetType = UNSET
    title: str | UnsetType = UNSET


class Context(_Open):
    """Its two checks msgspec cannot state (IPv4, mixed arrays) run in RecordValidator.check.

    A `__post_init__` hook would cost a Python call for every record; see `_context_problem`.
    """

    campaign: Campaign | UnsetType = UNSET
    truncated_ip: str | UnsetType = UNSET  # format ipv4 (a regex would cost more)
    locale: str | UnsetType = UNSET
    region: str | UnsetType = UNSET
    page: Page | UnsetType = UNSET
    user_agent: str | UnsetType = UNSET
    custom_context: dict[str, _Attribute] | UnsetType = UNSET


class SearchInformation(_Open):
    keywords: str | UnsetType = UNSET
    filters: dict[str, list[str]] | UnsetType = UNSET


class Interaction(
    msgspec.Struct,
    tag_field="type",
    forbid_unknown_fields=True,
    kw_only=True,
    omit_defaults=True,
    gc=False,
):
    """Fields of every interaction type; `INTERACTION_TYPES` holds the 29 concrete ones.

    `timestamp` decodes as text: `RecordValidator` checks it (see `parse_timestamp`, stricter
    than msgspec's datetime type) and needs the datetime only for the time window.
    """

    user_id: _Str512 | UnsetType = UNSET
    anonymous_id: _Str1024 | UnsetType = UNSET
    timestamp: _Timestamp | UnsetType = UNSET
    miso_id: _Uuid | UnsetType = UNSET
    context: Context | UnsetType = UNSET


class _ProductEvent(Interaction):
    product_ids: list[_Str512] | UnsetType = UNSET
    product_group_ids: list[_Str512] | UnsetType = UNSET


class _TimedProductEvent(_ProductEvent):
    duration: float | UnsetType = UNSET


class _CartEvent(_ProductEvent):
    quantities: list[float] | float | UnsetType = UNSET


class _CheckoutEvent(_CartEvent):
    revenue: float | UnsetType = UNSET


class _RateEvent(_ProductEvent):
    rating: float | UnsetType = UNSET  # miso-api.md says 0 to 5; the file sets no bounds


class _CustomEvent(_ProductEvent, kw_only=True):
    custom_action_name: str


class _SearchEvent(Interaction):
    search: SearchInformation | UnsetType = UNSET


class _PageView(Interaction):
    duration: float | UnsetType = UNSET


class _CategoryPageView(_PageView):
    category: list[str] | UnsetType = UNSET


class _FeedbackEvent(Interaction):
    question_id: _Str512 | UnsetType = UNSET
    result_type: str | UnsetType = UNSET
    value: str | UnsetType = UNSET


# Each type's fields, as the shape it shares with others (the file's 29 schemas, in its order).
_SHAPES: Final[Mapping[str, type[Interaction]]] = {
    "product_detail_page_view": _TimedProductEvent,
    "search": _SearchEvent,
    "home_page_view": _PageView,
    "category_page_view": _CategoryPageView,
    "promo_page_view": _TimedProductEvent,
    "product_image_view": _ProductEvent,
    "add_to_cart": _CartEvent,
    "remove_from_cart": _ProductEvent,
    "checkout": _CheckoutEvent,
    "refund": _ProductEvent,
    "subscribe": _ProductEvent,
    "unsubscribe": _ProductEvent,
    "read": _TimedProductEvent,
    "watch": _TimedProductEvent,
    "listen": _TimedProductEvent,
    "complete": _ProductEvent,
    "add_to_collection": _ProductEvent,
    "remove_from_collection": _ProductEvent,
    "like": _ProductEvent,
    "dislike": _ProductEvent,
    "share": _ProductEvent,
    "rate": _RateEvent,
    "bookmark": _ProductEvent,
    "feedback": _FeedbackEvent,
    "impression": _ProductEvent,
    "viewable_impression": _ProductEvent,
    "click": _ProductEvent,
    "submit": _ProductEvent,
    "custom": _CustomEvent,
}


def _tagged(type_name: str, shape: type[Interaction]) -> type[Interaction]:
    name = type_name.title().replace("_", "")
    leaf = msgspec.defstruct(name, [], bases=(shape,), tag=type_name, module=__name__)
    return leaf  # type: ignore[return-value]  # defstruct is typed as returning type[Struct]


# The concrete Struct of each interaction type, by the `type` value that selects it.
INTERACTION_TYPES: Final[Mapping[str, type[Interaction]]] = {
    type_name: _tagged(type_name, shape) for type_name, shape in _SHAPES.items()
}
_InteractionUnion: Any = functools.reduce(operator.or_, INTERACTION_TYPES.values())


# ---------------------------------------------------------------------------------------------
# Product and user records (closed).
# ---------------------------------------------------------------------------------------------

_ProductId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=512,
        pattern=r"\A[^_,][^,]*\Z",
        extra={
            "expected": 'a string of 1 to 512 characters without "," and not starting with "_"',
            "miso": "Must not contain ',' nor start with '_'.",
        },
    ),
]
_UserId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_ID,
        pattern=r"\A[^_]",
        extra={
            "expected": 'a string of 1 to 512 characters not starting with "_"',
            "miso": "Must not start with '_'.",
        },
    ),
]
_Uri = Annotated[str, Meta(min_length=1, max_length=65536)]  # format uri: checked in hooks
# JSON Schema's integer is a number without a fractional part: 1.0 is one (checked in hooks).
_Integer = Annotated[int | float, Meta(extra={"expected": "an integer", "json": ["integer"]})]
_ObjectAttribute = Annotated[
    bool | int | float | str | list[int | float | str | _FlatObject] | _FlatObject,
    Meta(extra={"expected": _ATTRIBUTE + ", or an object"}),
]
_ProductAttribute = Annotated[
    bool | int | float | str | list[int | float | str | dict[str, Any]] | _FlatObject,
    Meta(extra={"expected": _ATTRIBUTE + ", or an object"}),
]


class _Record(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Checks shared by products and users: date fields, URI fields, custom attributes."""

    _DATES: ClassVar[tuple[str, ...]] = ("created_at", "updated_at")
    _URIS: ClassVar[tuple[str, ...]] = ()

    created_at: str | UnsetType = UNSET
    updated_at: str | UnsetType = UNSET

    def __post_init__(self) -> None:
        for name in self._DATES:
            value = getattr(self, name)
            if value is not UNSET and not _is_date_or_date_time(value):
                raise _FieldError(
                    (name,),
                    "an ISO 8601 date-time with a time zone, or a date (YYYY-MM-DD)",
                    "The attribute should match the 'date-time' or 'date' format.",
                )
        for name in self._URIS:
            value = getattr(self, name)
            if value is not UNSET and _URI.fullmatch(value) is None:
                raise _FieldError(
                    (name,),
                    "an absolute URI (a scheme such as https: and no spaces)",
                    "The attribute should match the 'uri' format.",
                )
        attributes = getattr(self, "custom_attributes", UNSET)
        if attributes is not UNSET:
            _check_arrays(attributes, "custom_attributes")


class Location(_Open):
    lat: float
    lon: float


class Child(_Open):
    id: str
    url: str | UnsetType = UNSET
    title: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    html: str | UnsetType = UNSET
    headers: list[str] | UnsetType = UNSET
    custom_attributes: dict[str, _ObjectAttribute] | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.custom_attributes is not UNSET:
            _check_arrays(self.custom_attributes, "custom_attributes")


class Product(_Record):
    _DATES: ClassVar[tuple[str, ...]] = ("created_at", "published_at", "updated_at")
    _URIS: ClassVar[tuple[str, ...]] = ("url", "cover_image")

    product_id: _ProductId
    product_group_id: str | UnsetType = UNSET
    parent_id: str | UnsetType = UNSET
    related_ids: list[str] | UnsetType = UNSET
    type: str | UnsetType = UNSET
    title: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    short_description: str | UnsetType = UNSET
    language: Annotated[str, Meta(min_length=2)] | UnsetType = UNSET
    published_at: str | UnsetType = UNSET
    categories: list[list[str]] | UnsetType = UNSET
    tags: list[str] | UnsetType = UNSET
    url: _Uri | UnsetType = UNSET
    cover_image: _Uri | UnsetType = UNSET
    original_price: float | UnsetType = UNSET
    sale_price: float | UnsetType = UNSET
    margin: float | UnsetType = UNSET
    size: str | UnsetType = UNSET
    color: str | UnsetType = UNSET
    material: str | UnsetType = UNSET
    condition: Literal["NEW", "USED", "REFURBISHED"] | UnsetType = UNSET
    brand: str | UnsetType = UNSET
    authors: list[str] | UnsetType = UNSET
    publishers: list[str] | UnsetType = UNSET
    collections: list[str] | UnsetType = UNSET
    availability: Literal["IN_STOCK", "OUT_OF_STOCK", "PRE_ORDER"] | UnsetType = UNSET
    location: list[Location] | Location | UnsetType = UNSET
    rating: float | UnsetType = UNSET
    html: str | UnsetType = UNSET
    subtitle: str | UnsetType = UNSET
    headers: list[str] | UnsetType = UNSET
    paragraphs: list[str] | UnsetType = UNSET
    anchors: list[str] | UnsetType = UNSET
    children: list[Child] | UnsetType = UNSET
    enable_question_answering: bool | UnsetType = UNSET
    custom_attributes: dict[str, _ProductAttribute] | UnsetType = UNSET


class User(_Record):
    _URIS: ClassVar[tuple[str, ...]] = ("profile_image",)

    user_id: _UserId
    name: str | UnsetType = UNSET
    profile_image: _Uri | UnsetType = UNSET
    age: _Integer | UnsetType = UNSET
    gender: str | UnsetType = UNSET
    city: str | UnsetType = UNSET
    state: str | UnsetType = UNSET
    country: str | UnsetType = UNSET
    group_id: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    custom_attributes: dict[str, _Attribute] | UnsetType = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.age, float) and not self.age.is_integer():
            raise _FieldError(("age",), "an integer", _type_miso(["integer"], self.age))


_ROOT_TYPES: Final[Mapping[Kind, Any]] = {
    "interactions": _InteractionUnion,
    "products": Product,
    "users": User,
}
_DECODERS: Final[Mapping[Kind, Any]] = {
    kind: msgspec.json.Decoder(root).decode for kind, root in _ROOT_TYPES.items()
}


class KindFacts(NamedTuple):
    """What the contract says of one kind of record, in one place (miso-api.md)."""

    id_field: str  # the id a delete names; interactions are deleted by their user's id
    required: str  # the one field a record of this kind cannot lack
    extra: str  # where information outside the closed schema belongs
    upload_batch: int  # records per upload request, as the contract recommends


KINDS: Final[Mapping[Kind, KindFacts]] = {
    "interactions": KindFacts("user_id", "type", "context.custom_context", 10_000),
    "products": KindFacts("product_id", "product_id", "custom_attributes", 100),
    "users": KindFacts("user_id", "user_id", "custom_attributes", 100),
}
DELETE_BATCH: Final = 100  # ids per delete request, the catalogs' recommended batch


# ---------------------------------------------------------------------------------------------
# The hot path.
# ---------------------------------------------------------------------------------------------


class RecordValidator:
    """Validates one raw JSON record for the engine: contract schema plus backfill rules."""

    __slots__ = (
        "_decode",
        "_identity",
        "_interactions",
        "_kind",
        "_since",
        "_timestamp",
        "_until",
        "_window",
        "decoded",
    )

    decoded: Any  # the record the last `check` decoded (when it decoded), for the privacy step

    def __init__(self, kind: Kind, rules: Rules) -> None:
        for name, bound in (("since", rules.since), ("until", rules.until)):
            if bound is not None and bound.utcoffset() is None:
                raise ValueError(f"Rules.{name} must be time-zone aware, got {bound.isoformat()}")
        self._kind: Kind = kind
        self._decode = _DECODERS[kind]
        self._interactions = kind == "interactions"
        self._timestamp = rules.require_timestamp
        self._identity = rules.require_identity
        self._window = rules.since is not None or rules.until is not None
        self._since = rules.since or datetime.min.replace(tzinfo=UTC)
        self._until = rules.until or datetime.max.replace(tzinfo=UTC)
        self.decoded = None

    def check(self, raw: bytes) -> str | None:
        """None when valid; OUT_OF_WINDOW; else the reason in the user's terms.

        The hot path: `_context_problem`, `_mixed_key` and `parse_timestamp` are inlined.
        The record decoded is kept in `decoded` (when it returns None or OUT_OF_WINDOW, it is
        this line's), so that the [privacy] step reads the ids from it instead of decoding the
        line a second time (backfill.privacy.transform).
        """
        try:
            if not raw.isascii():
                raw.decode()  # msgspec skips the values of unknown keys without reading them
            record = self.decoded = self._decode(raw)
        except (UnicodeDecodeError, msgspec.MsgspecError, RecursionError):
            return _reason(self._kind, raw)
        if not self._interactions:
            return None
        context = record.context
        if context is not UNSET:
            ip = context.truncated_ip
            if ip is not UNSET and not _is_ipv4(ip):
                return _reason(self._kind, raw)
            custom = context.custom_context
            if custom is not UNSET and list in map(type, custom.values()):
                for value in custom.values():
                    if type(value) is list and len(value) > 1 and _is_mixed(value):
                        return _reason(self._kind, raw)
        text = record.timestamp
        if text is UNSET:
            if self._timestamp:
                return MISSING_TIMESTAMP
            when = None
        else:
            if text[10] not in "Tt" or (text[-1] not in "Zz" and text[-3] != ":"):
                return _reason(self._kind, raw)
            try:
                when = _decode_aware_datetime(_encode(text))
            except msgspec.ValidationError:
                when = _leap_second(text)
                if when is None:
                    return _reason(self._kind, raw)
        if self._identity and not (record.user_id or record.anonymous_id):
            return MISSING_IDENTITY
        if self._window and when is not None and not (self._since <= when < self._until):
            return OUT_OF_WINDOW
        return None

    def decode(self, raw: bytes) -> Any:
        """The decoded record (a Struct); raises RecordInvalid(reason).

        A record outside the time window still decodes: the window filters, it does not reject.
        """
        reason = self.check(raw)
        if reason is not None and reason is not OUT_OF_WINDOW:
            raise RecordInvalid(reason)
        return self._decode(raw)


_CONTRACT_ONLY: Final = Rules(require_timestamp=False, require_identity=False)


def miso_error_lines(kind: Kind, records: Sequence[bytes]) -> list[str]:
    """Server-side validation with Miso's semantics (contract only, no backfill rules).

    One line per bad record, `data.<index>[.<path>] [(<value>)] is invalid. <message>`.
    """
    validator = RecordValidator(kind, _CONTRACT_ONLY)
    lines: list[str] = []
    for index, raw in enumerate(records):
        if validator.check(raw) is not None:
            lines.append(_explained(kind, raw).miso_line(index))
    return lines


_ERROR_INDEX = re.compile(r"data\.(\d+)(?=[. ]|\Z)")


def parse_error_index(line: str) -> int | None:
    """The record index a Miso 422 line names (`data.<index>...`), or None."""
    match = _ERROR_INDEX.match(line)
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# Explaining a failure (rare): find the offending value, phrase it for the user and for Miso.
# ---------------------------------------------------------------------------------------------

_Segment = str | int


class _Problem(NamedTuple):
    path: tuple[_Segment, ...]
    reason: str  # user's terms, without the path
    miso: str  # Miso's message
    value: str | None = None  # shown in Miso's line, as Miso shows it for enums and patterns

    @property
    def text(self) -> str:
        """The reason in the user's terms: `context.page.url: ...`, `product_ids[2]: ...`."""
        where = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in self.path)
        return f"{where.lstrip('.')}: {self.reason}" if self.path else self.reason

    def miso_line(self, index: int) -> str:
        path = "".join(f".{s}" for s in self.path)
        value = f" ({self.value})" if self.value is not None else ""
        return f"data.{index}{path}{value} is invalid. {self.miso}"


def _reason(kind: Kind, raw: bytes) -> str:
    return _explained(kind, raw).text


def undecodable(raw: bytes) -> str | None:
    """Why `raw` is not one JSON document (invalid UTF-8, malformed, nested too deeply, a
    number out of range), in the words of a dead letter; None when it decodes.

    The mapping of other log shapes says it with the same words as native input."""
    problem = _undecodable(raw)
    return problem.text if isinstance(problem, _Problem) else None


def invalid_utf8(exc: UnicodeDecodeError) -> str:
    """The reason for text that is not UTF-8 (`exc` from decoding the whole text)."""
    return f"invalid UTF-8 at byte {exc.start}: {exc.reason}"


def _undecodable(raw: bytes) -> _Problem | _Decoded:
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return _Problem((), invalid_utf8(exc), "The record is not valid UTF-8.")
    try:
        return _Decoded(msgspec.json.decode(raw))
    except (msgspec.DecodeError, RecursionError) as exc:
        message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return _Problem(
            (), f"malformed JSON: {message}", f"The record is not valid JSON: {message}."
        )


class _Decoded(NamedTuple):
    document: Any


def _explained(kind: Kind, raw: bytes) -> _Problem:
    """What is wrong with a record the fast path rejected (validation runs again, slowly)."""
    decoded = _undecodable(raw)
    if isinstance(decoded, _Problem):
        return decoded
    document = decoded.document
    twice = _duplicate_key(raw)
    if twice is not None:
        return twice
    try:
        _DECODERS[kind](raw)
    except msgspec.ValidationError as exc:
        return _from_validation_error(kind, document, exc)
    return _after_decoding(document)


class _Pairs(dict[str, Any]):
    """A JSON object as `_duplicate_key` reads it: the first key it was given twice, if any."""

    twice: str | None = None


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    obj = _Pairs(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.twice = key
                break
            seen.add(key)
    return obj


def _duplicate_key(raw: bytes) -> _Problem | None:
    """A key some object of the record gives twice, the first in reading order.

    The fast path validates every value given and keeps the last, as most JSON readers do:
    a record whose values are all valid stays valid. When it is refused, a reason about the
    value it kept would be baffling (`user_id: expected a string, got "u1"`); naming the key
    given twice is what the user can act on."""
    try:
        document = json.loads(raw, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[tuple[_Segment, ...], Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            if isinstance(value, _Pairs) and value.twice is not None:
                key = value.twice
                reason = f'duplicate key "{key}": an object may give each key only once'
                return _Problem(path, reason, f"The property {key} is defined more than once.")
            stack.extend(((*path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))
    return None


def _after_decoding(document: Any) -> _Problem:
    """The interaction checks RecordValidator.check runs after msgspec's (see `Context`)."""
    context = document.get("context") or {}
    problem = _context_problem(context.get("truncated_ip"), context.get("custom_context"))
    if problem is not None:
        return problem
    timestamp = document.get("timestamp")
    return _Problem(
        ("timestamp",), f"expected {_DATE_TIME}, got {_show(timestamp)}", _DATE_TIME_MISO
    )


def _context_problem(ip: str | None, custom: dict[str, Any] | None) -> _Problem | None:
    """`context` fields of a record msgspec accepted: IPv4, then arrays of custom_context."""
    if ip is not None and not _is_ipv4(ip):
        path: tuple[_Segment, ...] = ("context", "truncated_ip")
        return _Problem(path, f"expected an IPv4 address, got {_show(ip)}", _IPV4_MISO)
    key = _mixed_key(custom or {})
    if custom and key is not None:
        path = ("context", "custom_context", key)
        return _Problem(path, f"expected {_MIXED}, got {_show(custom[key])}", _MIXED_MISO)
    return None


_IPV4_MISO: Final = "The attribute should match the 'ipv4' format."


_MESSAGE = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")


def _from_validation_error(kind: Kind, document: Any, exc: msgspec.ValidationError) -> _Problem:
    match = _MESSAGE.fullmatch(str(exc))
    assert match is not None  # the pattern matches any text
    segments: list[_Segment | None] = [
        name if name else (int(index) if index else None)
        for name, index in _SEGMENT.findall(match["path"] or "")
    ]
    cause = exc.__cause__
    if isinstance(cause, _FieldError):
        segments.extend(cause.subpath)
    return _classify(kind, document, segments, match["message"], cause)


def _classify(
    kind: Kind, document: Any, segments: list[_Segment | None], message: str, cause: object
) -> _Problem:
    if kind == "interactions" and segments == ["type"] and isinstance(document, dict):
        return _tag_problem(document.get("type"))
    path, tp, value = _locate(_ROOT_TYPES[kind], document, segments)
    if isinstance(cause, _FieldError):
        return _Problem(path, f"expected {cause.expected}, got {_show(value)}", cause.miso)
    if message.startswith("Object contains unknown field"):
        field = message.split("`")[1]
        miso = f"The property {field} is not defined and the definition does not allow "
        return _Problem(
            path, _unknown_field(kind, document, field), miso + "additional properties."
        )
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        return _Problem(
            path, f'missing required field "{field}"', f"The property {field} is required."
        )
    return _value_problem(path, tp, value, message)


def _unknown_field(kind: Kind, document: Any, field: str) -> str:
    """Closed records: say where the field belongs instead (another type, or the free-form part)."""
    owners = [name for name, cls in INTERACTION_TYPES.items() if field in cls.__struct_fields__]
    if kind == "interactions" and owners:
        only = f" (only on {', '.join(owners)})" if len(owners) <= 3 else ""
        return f'field "{field}" is not allowed on type {_show(document.get("type"))}{only}'
    return f'unknown field "{field}" (extra information belongs in {KINDS[kind].extra})'


def _tag_problem(tag: object) -> _Problem:
    if isinstance(tag, str):
        return _Problem(
            ("type",),
            f"unknown interaction type {_show(tag)}",
            f"Is not one of the {len(INTERACTION_TYPES)} interaction types.",
            _show(tag),
        )
    return _Problem(
        ("type",),
        f"expected an interaction type name (a string), got {_show(tag)}",
        _type_miso(["string"], tag),
    )


def _value_problem(path: tuple[_Segment, ...], tp: Any, value: Any, message: str) -> _Problem:
    info = mi.type_info(tp)
    expected = f"expected {_describe(info)}"
    if not path and not isinstance(value, dict):
        return _Problem(
            path, f"expected a JSON object, got {_show(value)}", _type_miso(["object"], value)
        )
    if message.startswith("Expected `") and "`, got `" in message:
        return _Problem(
            path, f"{expected}, got {_show(value)}", _type_miso(_json_types(info), value)
        )
    bound = re.fullmatch(r"Expected `str` of length (<=|>=) (\d+)", message)
    if bound is not None and isinstance(value, str):
        side = "most" if bound[1] == "<=" else "least"
        miso = _extra(info, "miso") or f"Must be at {side} {bound[2]} characters long."
        return _Problem(path, f"{expected}, got {_show(value)}", miso)
    if message.startswith(("Expected `str` matching regex", "Invalid enum value")):
        return _Problem(path, f"{expected}, got {_show(value)}", _pattern_miso(info), _show(value))
    detail = message[:1].lower() + message[1:]
    return _Problem(path, f"{detail}, got {_show(value)}", f"The attribute is invalid: {message}.")


def _locate(
    tp: Any, document: Any, segments: list[_Segment | None]
) -> tuple[tuple[_Segment, ...], Any, Any]:
    """Follow msgspec's path through the document and the types together.

    msgspec writes a dict value's key as `[...]`; the key is found again by validating each
    value of that dict.
    """
    path: list[_Segment] = []
    for segment in segments:
        tp = _narrow(tp, document)
        origin = get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            fields = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}
            tp = fields.get(str(segment), Any)
        elif origin is list or origin is dict:
            tp = get_args(tp)[-1]
        if segment is None:
            segment = _failing_key(tp, document)
        path.append(segment)
        document = _child(document, segment)
    return tuple(path), tp, document


def _narrow(tp: Any, document: Any) -> Any:
    """The member of a union (or the tagged interaction type) that `document` belongs to."""
    if get_origin(tp) is Annotated:
        return _narrow(get_args(tp)[0], document)
    members = [m for m in get_args(tp) if m is not UnsetType] if _is_union(tp) else [tp]
    if len(members) > 1 and isinstance(document, dict) and "type" in document:
        tagged = INTERACTION_TYPES.get(str(document["type"]))
        if tagged in members:
            return tagged
    fitting = [m for m in members if _fits(m, document)]
    return _narrow(fitting[0], document) if len(fitting) == 1 and fitting[0] is not tp else tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) is Union or isinstance(tp, types.UnionType)


def _fits(tp: Any, document: Any) -> bool:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    origin = get_origin(tp) or tp
    if isinstance(document, list):
        return origin is list
    if isinstance(document, dict):
        return origin is dict or (isinstance(origin, type) and issubclass(origin, msgspec.Struct))
    return False


def _failing_key(value_type: Any, document: Any) -> str:
    if isinstance(document, dict):
        for key, value in document.items():
            try:
                msgspec.convert(value, value_type, strict=True)
            except msgspec.ValidationError:
                return str(key)
    return "..."


def _child(document: Any, segment: _Segment) -> Any:
    if isinstance(document, dict):
        return document.get(segment)
    if isinstance(document, list) and isinstance(segment, int) and segment < len(document):
        return document[segment]
    return None


_JSON_NAMES: Final[Mapping[type, str]] = {
    mi.StrType: "string",
    mi.LiteralType: "string",
    mi.RawType: "string",
    mi.FloatType: "number",
    mi.IntType: "integer",
    mi.BoolType: "boolean",
    mi.ListType: "array",
    mi.DictType: "object",
    mi.StructType: "object",
}


def _json_types(info: mi.Type) -> list[str]:
    if isinstance(info, mi.Metadata):
        return list((info.extra or {}).get("json", [])) or _json_types(info.type)
    if isinstance(info, mi.UnionType):
        return [name for member in info.types for name in _json_types(member)]
    return [_JSON_NAMES.get(type(info), "value")]


def _type_miso(expected: list[str], value: Any) -> str:
    names = ", ".join(f"'{name}'" for name in dict.fromkeys(expected))
    return (
        f"The attribute was expected to be of type '{names}' "
        f"but type '{_json_type_of(value)}' was given."
    )


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for python_type, name in (
        (int, "integer"),
        (float, "number"),
        (str, "string"),
        (list, "array"),
    ):
        if isinstance(value, python_type):
            return name
    return "object"


def _extra(info: mi.Type, key: str) -> str | None:
    """What a field's `Meta(extra=...)` says for the error messages (see `_describe`)."""
    if isinstance(info, mi.Metadata) and info.extra and key in info.extra:
        return str(info.extra[key])
    return None


def _pattern_miso(info: mi.Type) -> str:
    custom = _extra(info, "miso")
    if custom:
        return custom
    if isinstance(info, mi.Metadata):
        return _pattern_miso(info.type)
    if isinstance(info, mi.LiteralType):
        values = ", ".join(_show(v) for v in info.values)
        return f"Does not have a value in the enumeration [{values}]."
    return "Does not match the expected pattern."


def _describe(info: mi.Type) -> str:
    if isinstance(info, mi.Metadata):
        return _extra(info, "expected") or _describe(info.type)
    if isinstance(info, mi.UnionType):
        members = [m for m in info.types if not _shadowed(m, info)]
        return " or ".join(_describe(m) for m in members)
    if isinstance(info, mi.StrType):
        return "a string" + _length(info)
    if isinstance(info, mi.ListType):
        return f"an array of {_plural(info.item_type)}"
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(_show(v) for v in info.values)
    return _NOUNS.get(type(info), ("a value", "values"))[0]


def _plural(info: mi.Type) -> str:
    if isinstance(info, mi.Metadata):
        return _plural(info.type)
    if isinstance(info, mi.UnionType):
        return " or ".join(_plural(m) for m in info.types if not _shadowed(m, info))
    if isinstance(info, mi.ListType):
        return f"arrays of {_plural(info.item_type)}"
    return _NOUNS.get(type(info), ("a value", "values"))[1]


_NOUNS: Final[Mapping[type, tuple[str, str]]] = {
    mi.StrType: ("a string", "strings"),
    mi.LiteralType: ("a string", "strings"),
    mi.FloatType: ("a number", "numbers"),
    mi.IntType: ("an integer", "integers"),
    mi.BoolType: ("a boolean", "booleans"),
    mi.DictType: ("an object", "objects"),
    mi.StructType: ("an object", "objects"),
}


def _shadowed(member: mi.Type, union: mi.UnionType) -> bool:
    """An integer is a number: `int | float` reads as "a number"."""
    return isinstance(member, mi.IntType) and any(isinstance(m, mi.FloatType) for m in union.types)


def _length(info: mi.StrType) -> str:
    low, high = info.min_length, info.max_length
    if low is not None and high is not None:
        return f" of {low} to {high} characters"
    if high is not None:
        return f" of at most {high} characters"
    if low is not None:
        return f" of at least {low} characters"
    return ""


_SHOW_LIMIT: Final = 60


def _show(value: Any) -> str:
    """The offending value as JSON, shortened: a reason is one line of a report."""
    if isinstance(value, str) and len(value) > _SHOW_LIMIT:
        return f"a string of {len(value)} characters starting {_show(value[:20])}"
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def attribute_type(value: object) -> str | None:
    """The type family Miso keeps per key: a scalar and an array of it are the same family."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        if not value:
            return None
        first = value[0]
        return "array of objects" if isinstance(first, dict) else attribute_type(first)
    return "unknown"
