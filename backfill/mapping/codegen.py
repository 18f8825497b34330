"""Writing the mapping's function: Python source, the objects it names, and `exec`.

The source is written line by line with its indentation; the objects the function refers to
(conversions, value maps, constants) live in its globals under generated names, one per object.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Code:
    """Python source being written, and the objects it refers to by name.

    Nested objects of the record (`context`, `context.custom_context`) live in local
    variables, created empty at the top (`mark()`) and attached to their parents at the end
    when they are not empty (`assemble()`): no lookups on the way, no empty objects sent."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.indent = 0
        self.namespace: dict[str, Any] = {}
        self._names: dict[int, str] = {}
        self._containers: dict[tuple[str, ...], str] = {}
        self._mark = 0

    def mark(self) -> None:
        """Where the nested objects are created."""
        self._mark = len(self.lines)

    def container(self, parts: list[str]) -> str:
        """The local variable holding the nested object at `parts` ("out" for the record)."""
        if not parts:
            return "out"
        key = tuple(parts)
        if key not in self._containers:
            self.container(parts[:-1])
            self._containers[key] = f"o{len(self._containers)}"
        return self._containers[key]

    def assemble(self) -> None:
        indent = "    " * self.indent
        made = [f"{indent}{var} = {{}}" for var in self._containers.values()]
        self.lines[self._mark : self._mark] = made
        for key in sorted(self._containers, key=len, reverse=True):
            var = self._containers[key]
            self.line(f"if {var}:")
            with self.block():
                self.line(f"{self.container(list(key[:-1]))}[{key[-1]!r}] = {var}")

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    @contextmanager
    def block(self) -> Iterator[None]:
        self.indent += 1
        try:
            yield
        finally:
            self.indent -= 1

    def name(self, obj: Any, hint: str) -> str:
        """A name for `obj` in the function's globals (one per object)."""
        known = self._names.get(id(obj))
        if known is not None:
            return known
        name = f"{hint}_{len(self._names)}"
        self.namespace[name] = obj
        self._names[id(obj)] = name
        return name

    def fn(self, obj: Any, hint: str | None = None) -> str:
        return self.name(obj, hint or getattr(obj, "__name__", "fn").strip("_"))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def compile(self, function: str) -> Any:
        exec(compile(self.text(), "<backfill mapping>", "exec"), self.namespace)
        return self.namespace[function]
