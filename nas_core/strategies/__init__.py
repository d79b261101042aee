"""Search strategies behind one ask/tell interface, registered by name."""

from __future__ import annotations

from collections.abc import Callable

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace
from nas_core.strategies.base import CandidateResult, Proposal, Strategy
from nas_core.strategies.bayesian import BayesianOptimization
from nas_core.strategies.evolution import RegularizedEvolution
from nas_core.strategies.genetic import GeneticAlgorithm
from nas_core.strategies.local_search import LocalSearch
from nas_core.strategies.multi_objective import NSGA2


class RandomSearch(Strategy):
    """Uniform samples from the space (never the same architecture twice)."""

    name = "random"


Constraint = Callable[[Genome], bool]

# name -> factory(space, seed, population, constraint); the name is what configs and flags use
STRATEGIES: dict[str, Callable[[SearchSpace, int | None, int, Constraint | None], Strategy]] = {
    "random": lambda space, seed, population, constraint: RandomSearch(space, seed=seed, constraint=constraint),
    "evolution": lambda space, seed, population, constraint: RegularizedEvolution(
        space, seed=seed, constraint=constraint, population_size=population
    ),
    "genetic": lambda space, seed, population, constraint: GeneticAlgorithm(
        space, seed=seed, constraint=constraint, population_size=population
    ),
    "local": lambda space, seed, population, constraint: LocalSearch(space, seed=seed, constraint=constraint),
    "nsga2": lambda space, seed, population, constraint: NSGA2(
        space, seed=seed, constraint=constraint, population_size=population
    ),
    "bo": lambda space, seed, population, constraint: BayesianOptimization(space, seed=seed, constraint=constraint),
}


def create_strategy(
    name: str,
    space: SearchSpace,
    *,
    seed: int | None,
    population: int = 8,
    constraint: Constraint | None = None,
) -> Strategy:
    """Look a strategy up by the name used in configs and flags."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' (known: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name](space, seed, population, constraint)


__all__ = [
    "BayesianOptimization",
    "NSGA2",
    "STRATEGIES",
    "CandidateResult",
    "GeneticAlgorithm",
    "LocalSearch",
    "Proposal",
    "RandomSearch",
    "RegularizedEvolution",
    "Strategy",
    "create_strategy",
]
