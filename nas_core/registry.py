"""A name -> factory registry: what makes ops, spaces, strategies, sources, proxies and evaluators plain strings.

Configs, flags and Prefect parameters name an entry; ``create(name, ...)`` builds it, and an unknown name is a
``ValueError`` that lists the known ones. A registry is a read-only mapping (``REG[name]``, ``name in REG``,
``sorted(REG)``) iterated in registration order; entries are added with ``@REG.register(name)`` and never
replaced, so two modules cannot silently claim the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping name -> factory, filled by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what an entry is, for messages: "op", "search space", ...
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name already taken is a ValueError."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated factory (a class or function) under ``name``, unchanged."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def lookup(self, name: str) -> T:
        """The entry registered as ``name``, or a ValueError that lists the known names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} '{name}' (known: {', '.join(sorted(self._entries))})") from None

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.lookup(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
