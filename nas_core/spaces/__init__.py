"""Search spaces, registered by name: sample, mutate and cross genomes (always valid ones)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from nas_core.genome import Genome


class SpaceExhausted(ValueError):
    """The space has no genome that satisfies the request (e.g. no mutation differs from the parent)."""


class SearchSpace(Protocol):
    """What a strategy needs from a space; every returned genome validates."""

    name: str

    def sample(self, rng: random.Random) -> Genome: ...

    def mutate(self, genome: Genome, rng: random.Random) -> Genome: ...

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome: ...

    def describe(self, genome: Genome) -> dict[str, Any]: ...


SPACES: dict[str, Callable[..., SearchSpace]] = {}


def register_space(name: str):
    """Register a space factory under ``name`` (the string used in configs and flags)."""

    def decorate(factory: Callable[..., SearchSpace]):
        SPACES[name] = factory
        return factory

    return decorate


def create_space(name: str, **options: Any) -> SearchSpace:
    if name not in SPACES:
        raise ValueError(f"unknown search space '{name}' (known: {', '.join(sorted(SPACES))})")
    return SPACES[name](**options)


from nas_core.spaces import image  # noqa: E402,F401  (registers the built-in spaces)
