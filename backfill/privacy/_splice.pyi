from collections.abc import Callable
from typing import NewType

Cache = NewType("Cache", object)  # a capsule: raw value -> rewritten value, bounded

def cache(limit: int, /) -> Cache: ...
def cached(cache: Cache, /) -> int: ...
def rewrite(
    lines: list[bytes],
    targets: tuple[tuple[bytes, Cache, Callable[[bytes], bytes]], ...],
    nested: tuple[bytes, bytes, Cache, Callable[[bytes], bytes]] | None,
    marks: bool,
    /,
) -> tuple[list[int], list[int], list[int]]: ...
def marked(text: str | bytes, /) -> bool: ...
