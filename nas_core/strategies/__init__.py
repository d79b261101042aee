"""Search strategies behind one ask/tell interface, registered by name (``@register_strategy`` on the class)."""

from __future__ import annotations

from collections.abc import Callable

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace
from nas_core.strategies.base import STRATEGIES, CandidateResult, Proposal, Strategy, register_strategy

# import order is registration order: the order of STRATEGIES and so of the strategy benchmark's table
# isort: off
from nas_core.strategies.random_search import RandomSearch
from nas_core.strategies.evolution import RegularizedEvolution
from nas_core.strategies.genetic import GeneticAlgorithm
from nas_core.strategies.local_search import LocalSearch
from nas_core.strategies.multi_objective import NSGA2
from nas_core.strategies.bayesian import BayesianOptimization
# isort: on

Constraint = Callable[[Genome], bool]


def create_strategy(
    name: str,
    space: SearchSpace,
    *,
    seed: int | None,
    population: int = 8,
    constraint: Constraint | None = None,
) -> Strategy:
    """Look a strategy up by the name used in configs and flags; ``population`` goes to population-based ones."""
    cls = STRATEGIES.lookup(name)
    options = {"population_size": population} if cls.takes_population else {}
    return cls(space, seed=seed, constraint=constraint, **options)


def list_strategies() -> list[str]:
    """The registered strategy names, in registration order."""
    return STRATEGIES.names()


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
    "list_strategies",
    "register_strategy",
]
