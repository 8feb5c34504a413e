"""A tiny string registry: ``register``, ``get``, ``names``; drives parametrized tests."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import MbdlError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names give an error listing the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None):
        """Register ``item`` under ``name``; usable as a decorator when ``item`` is omitted."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco(item) if item is not None else deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise MbdlError(f"unknown {self.kind} {name!r}", f"choose one of: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
