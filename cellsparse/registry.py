"""Named things the project looks up by name (strategies, objectives, k rules and their torch-free
facts), kept one way: in the order they were added, a name added twice is an error, and an unknown
name lists the valid ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``kind`` names what is kept in messages ("strategy"); ``unknown`` is the error ``get`` raises."""

    def __init__(self, kind: str, *, unknown: type[Exception] = KeyError, added: str = "registered") -> None:
        self.kind, self.unknown, self.added = kind, unknown, added
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is {self.added} twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item called ``name``; ``unknown`` naming the valid ones when there is none."""
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(self._items) or f"(none {self.added})"
            raise self.unknown(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def find(self, name: object) -> T | None:
        """The item called ``name``, or None."""
        return self._items.get(name) if isinstance(name, str) else None

    def names(self) -> list[str]:
        """Every name, in the order added."""
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
