"""The fields a mapping may fill: the Miso record's own, derived from the schema's types.

A mapping's targets are checked against these trees at start-up ("context.locale" exists,
"context.colour" does not, "context.custom_context" holds free keys), so that a typo is a
message with a suggestion rather than a 422 an hour into a load.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Final

import msgspec
import msgspec.inspect as mi

from backfill.schema import INTERACTION_TYPES, Kind, Product, User

Tree = dict[str, "Tree | None"]  # None: a leaf; OPEN marks a dict of free keys
OPEN: Final[Tree] = {}


def tree(kind: Kind) -> Tree:
    return _TREES[kind]


def _struct_tree(info: mi.StructType) -> Tree:
    tree: Tree = {}
    for f in info.fields:
        tree[f.encode_name] = _node(f.type)
    return tree


def _node(t: mi.Type) -> Tree | None:
    options = t.types if isinstance(t, mi.UnionType) else (t,)
    for option in options:
        if isinstance(option, mi.StructType):
            return _struct_tree(option)
        if isinstance(option, mi.DictType):
            return OPEN
    return None


def _interaction_tree() -> Tree:
    tree: Tree = {"type": None}
    for cls in INTERACTION_TYPES.values():
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        for name, node in _struct_tree(info).items():
            tree.setdefault(name, node)
    return tree


def _record_tree(cls: type[msgspec.Struct]) -> Tree:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return _struct_tree(info)


_TREES: Final[Mapping[Kind, Tree]] = {
    "interactions": _interaction_tree(),
    "products": _record_tree(Product),
    "users": _record_tree(User),
}


def target_problem(target: str, kind: Kind) -> str | None:
    """Why `target` is not a field of a Miso record of `kind`, or None."""
    node: Tree | None = _TREES[kind]
    parts = target.split(".")
    for depth, part in enumerate(parts):
        if node is OPEN:
            if depth != len(parts) - 1:
                return f"the values of {'.'.join(parts[:depth])} cannot be objects"
            return None
        if node is None:
            return f"{'.'.join(parts[:depth])} is not an object"
        if part not in node:
            close = difflib.get_close_matches(part, node, 1)
            hint = f' (did you mean "{".".join([*parts[:depth], close[0]])}"?)' if close else ""
            return f'"{target}" is not a field of Miso {kind}{hint}'
        node = node[part]
    if node is OPEN:
        return f"{target} holds free keys: name one, e.g. {target}.my_key"
    return None
