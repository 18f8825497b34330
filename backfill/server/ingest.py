"""From a request body to what may be stored, with Miso's semantics and no HTTP in sight.

Interactions: the body is split into each record's raw bytes (stored exactly as received, so
that an exact duplicate is identical bytes), validated with the engine's own schema module,
and the reject_user_id fault adds its lines exactly like a schema error would.
Products and users: after the same validation, the per-record rules Miso applies later, in the
task (consistent custom attribute types, the task_reject_id fault), decide what is stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, NamedTuple, TypeVar

import msgspec

from backfill.schema import KINDS, Kind, attribute_type, miso_error_lines

EntityKind = Literal["products", "users"]

_LINE_INDEX = re.compile(r"^data\.(\d+)")
_T = TypeVar("_T")


class RequestInvalid(ValueError):
    """The body is not the endpoint's shape at all (malformed JSON, no `data` array)."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


# One stored interaction as (type, user_id, body), in SQLite column order. A plain tuple: a
# NamedTuple costs four times as much to build, 10,000 times per request.
Interaction = tuple[str, str | None, bytes]
TYPE: Final = 0
USER_ID: Final = 1
BODY: Final = 2


class Entity(NamedTuple):
    """One stored product or user, replaced whole by id."""

    id: str
    body: bytes


class EntityBatch(NamedTuple):
    """What an accepted product/user upload stores, and what its task status reports."""

    accepted: list[Entity]
    task_lines: list[str]
    new_attribute_types: dict[str, str]


class _Upload(msgspec.Struct):
    data: list[msgspec.Raw]


class _Head(msgspec.Struct):
    """The two fields of an interaction the store indexes; everything else stays raw."""

    type: str | None = None
    user_id: str | None = None


class _LooseHead(msgspec.Struct):
    """The same, for unvalidated records whose fields may have any type."""

    type: Any = None
    user_id: Any = None


class _HeadUpload(msgspec.Struct):
    data: list[_Head]


class _InteractionDelete(msgspec.Struct):
    user_ids: list[str]


class _ProductIds(msgspec.Struct):
    product_ids: list[str]


class _UserIds(msgspec.Struct):
    user_ids: list[str]


class _ProductBulkDelete(msgspec.Struct):
    data: _ProductIds


class _UserBulkDelete(msgspec.Struct):
    data: _UserIds


def decode_upload(body: bytes) -> list[bytes]:
    """Each record's exact bytes; raises RequestInvalid when the body is not {"data": [...]}."""
    upload = _decode(body, _Upload)
    return [bytes(raw) for raw in upload.data]


def decode_interaction_delete(body: bytes) -> list[str]:
    return _decode(body, _InteractionDelete).user_ids


def decode_bulk_delete(kind: EntityKind, body: bytes) -> list[str]:
    if kind == "products":
        return _decode(body, _ProductBulkDelete).data.product_ids
    return _decode(body, _UserBulkDelete).data.user_ids


def _decode(body: bytes, shape: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=shape)
    except msgspec.ValidationError as exc:
        raise RequestInvalid(str(exc), "value_error") from None
    except msgspec.DecodeError as exc:
        raise RequestInvalid(str(exc), "value_error.jsondecode") from None


def schema_lines(kind: Kind, records: Sequence[bytes], validate: bool) -> list[str]:
    """Miso's 422 lines for these records; none when validation is switched off."""
    return miso_error_lines(kind, records) if validate and records else []


def interactions(body: bytes, records: list[bytes]) -> list[Interaction]:
    """Pairs each record's bytes with its type and user_id, in one decoding pass if valid."""
    try:
        heads = msgspec.json.decode(body, type=_HeadUpload).data
    except msgspec.ValidationError:  # some type or user_id is not a string: go record by record
        return [_loose(raw) for raw in records]
    return [(head.type or "", head.user_id, raw) for head, raw in zip(heads, records, strict=True)]


def counted_interactions(body: bytes) -> list[Interaction]:
    """Type and user_id of each record, without its bytes: for a store that only counts."""
    try:
        heads = _decode(body, _HeadUpload).data
    except RequestInvalid:
        return interactions(body, decode_upload(body))  # the slow path words the error
    return [(head.type or "", head.user_id, b"") for head in heads]


def _loose(raw: bytes) -> Interaction:
    try:
        head = msgspec.json.decode(raw, type=_LooseHead)
    except msgspec.ValidationError:
        head = _LooseHead()
    kind = head.type if isinstance(head.type, str) else ""
    return (kind, head.user_id if isinstance(head.user_id, str) else None, raw)


def reject_lines(items: Sequence[Interaction], rejects: Callable[[object], bool]) -> dict[int, str]:
    """The reject_user_id fault, worded like any schema line so the client's parser is tested."""
    return {
        index: f"data.{index}.user_id is invalid. The user_id is rejected by the server's "
        "reject_user_id rule."
        for index, item in enumerate(items)
        if rejects(item[USER_ID])
    }


def merge_lines(lines: list[str], extra: dict[int, str]) -> list[str]:
    """Adds a line for each extra index not already named, keeping the index order."""
    if not extra:
        return lines
    named = {line_index(line) for line in lines}
    merged = lines + [line for index, line in extra.items() if index not in named]
    return sorted(merged, key=line_index)


def line_index(line: str) -> int:
    match = _LINE_INDEX.match(line)
    return int(match.group(1)) if match else -1


def entity_objects(kind: EntityKind, records: Sequence[bytes]) -> tuple[list[Any], dict[int, str]]:
    """Decoded records, plus a line for each one without a usable id (possible when unvalidated)."""
    objects: list[Any] = [msgspec.json.decode(raw) for raw in records]
    field = KINDS[kind].id_field
    lines = {
        index: f"data.{index}.{field} is invalid. The attribute is required and must be a string."
        for index, obj in enumerate(objects)
        if not (isinstance(obj, dict) and isinstance(obj.get(field), str))
    }
    return objects, lines


class AttributeTypes:
    """The custom_attributes rule: once a key has a value type, every record must keep it.

    Registration happens when a record is admitted, before the store write is awaited, so two
    concurrent uploads cannot both introduce a key with different types.
    """

    def __init__(self, known: dict[str, str]) -> None:
        self.known = dict(known)

    def conflict(self, index: int, custom: object) -> tuple[str | None, dict[str, str]]:
        """An error line for the first inconsistent key, or the record's new key types."""
        if not isinstance(custom, dict):
            return None, {}
        fresh: dict[str, str] = {}
        for key, value in custom.items():
            found = attribute_type(value)
            if found is None:
                continue
            expected = self.known.get(key)
            if expected is not None and expected != found:
                return (
                    f"data.{index}.custom_attributes.{key} is invalid. The attribute type "
                    f"'{found}' differs from type '{expected}' that other records use for "
                    "this key.",
                    {},
                )
            if expected is None:
                fresh[key] = found
        return None, fresh

    def admit(self, fresh: dict[str, str]) -> None:
        self.known.update(fresh)


def admit_entities(
    kind: EntityKind,
    objects: list[Any],
    records: list[bytes],
    registry: AttributeTypes,
    rejects: Callable[[str], bool],
) -> EntityBatch:
    """Applies the task-time rules; rejected records go to the task status, not the store."""
    field = KINDS[kind].id_field
    accepted: list[Entity] = []
    lines: list[str] = []
    new_types: dict[str, str] = {}
    for index, (obj, raw) in enumerate(zip(objects, records, strict=True)):
        record_id: str = obj[field]
        if rejects(record_id):
            lines.append(
                f"data.{index}.{field} is invalid. The record is rejected by the server's "
                "task_reject_id rule."
            )
            continue
        line, fresh = registry.conflict(index, obj.get("custom_attributes"))
        if line is not None:
            lines.append(line)
            continue
        registry.admit(fresh)
        new_types.update(fresh)
        accepted.append(Entity(record_id, raw))
    return EntityBatch(accepted, lines, new_types)
