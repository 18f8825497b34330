from collections.abc import Callable

def rewrite(
    lines: list[bytes],
    targets: tuple[tuple[bytes, dict[bytes, bytes], Callable[[bytes], bytes]], ...],
    nested: tuple[bytes, bytes, dict[bytes, bytes], Callable[[bytes], bytes]] | None,
    limit: int,
    marks: bool,
    /,
) -> tuple[list[int], list[int], list[int]]: ...
def marked(text: str | bytes, /) -> bool: ...
