"""Explaining a failure (rare): find the offending value, phrase it for the user and for Miso."""

from __future__ import annotations

import json
import re
import types
from typing import Annotated, Any, Final, NamedTuple, Union, get_args, get_origin

import msgspec
import msgspec.inspect as mi
from msgspec import UnsetType

from backfill.schema.formats import (
    _DATE_TIME,
    _DATE_TIME_MISO,
    _MIXED,
    _MIXED_MISO,
    _is_ipv4,
    _mixed_key,
)
from backfill.schema.records import _DECODERS, _ROOT_TYPES, INTERACTION_TYPES, KINDS
from backfill.schema.rules import Kind, _FieldError
from backfill.schema.wording import _describe, _extra, _json_types, _pattern_miso, _show, _type_miso

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
