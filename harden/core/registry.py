"""A name -> plug-in registry keyed by the short name used in YAML (one per plug-in kind)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from harden.core.errors import HardenError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """Registry of one plug-in kind. Duplicate names are a programming error; unknown names list the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"duplicate {self.kind} registration: {name!r}")
            self._entries[name] = Entry(name, obj, description)
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove a plug-in (tests that register their own, and a plug-in replacing a built-in one)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise HardenError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]
