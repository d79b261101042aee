"""Search strategies behind one ask/tell interface, registered by name."""

from __future__ import annotations

from collections.abc import Callable

from nas_core.spaces import SearchSpace
from nas_core.strategies.base import CandidateResult, Proposal, Strategy
from nas_core.strategies.evolution import RegularizedEvolution


class RandomSearch(Strategy):
    """Uniform samples from the space (never the same architecture twice)."""

    name = "random"


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "random": lambda space, seed, population: RandomSearch(space, seed=seed),
    "evolution": lambda space, seed, population: RegularizedEvolution(space, seed=seed, population_size=population),
}


def create_strategy(name: str, space: SearchSpace, *, seed: int | None, population: int = 8) -> Strategy:
    """Look a strategy up by the name used in configs and flags."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' (known: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name](space, seed, population)


__all__ = ["STRATEGIES", "CandidateResult", "Proposal", "RandomSearch", "RegularizedEvolution", "Strategy", "create_strategy"]
