"""The records of the contract as msgspec Structs: a closed Struct per interaction type,
tagged by `type`; products and users (closed); what each kind's records are keyed by."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple

import msgspec
from msgspec import UNSET, Meta, UnsetType

from backfill.schema.formats import _URI, _check_arrays, _is_date_or_date_time, _Timestamp
from backfill.schema.rules import Kind, _FieldError
from backfill.schema.wording import _type_miso

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
