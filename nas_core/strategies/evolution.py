"""Regularized (aging) evolution with tournament selection, mutation and crossover (Real et al., 2019)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace
from nas_core.strategies.base import CandidateResult, Proposal, Strategy, register_strategy


@register_strategy("evolution")
class RegularizedEvolution(Strategy):
    """Random genomes until the population is full; then children of tournament winners.

    The population keeps the ``population_size`` most recent successful candidates (the oldest dies,
    whatever its fitness), which is what makes the evolution "regularized".

    Told results it did not propose: successful ones join the population as if it had proposed them, in
    the order told (so a warm start with at least ``population_size`` successes breeds from its first ask,
    from the most recent ones).
    """

    name = "evolution"
    takes_population = True

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        constraint: Callable[[Genome], bool] | None = None,
        population_size: int = 8,
        tournament_size: int = 3,
        crossover_prob: float = 0.3,
    ) -> None:
        super().__init__(space, seed=seed, constraint=constraint)
        if population_size < 1 or tournament_size < 1:
            raise ValueError("population_size and tournament_size must be at least 1")
        if not 0.0 <= crossover_prob <= 1.0:
            raise ValueError("crossover_prob must be within [0, 1]")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        self.population: list[dict[str, Any]] = []  # oldest first: {"genome", "hash", "fitness"}

    def _tournament(self) -> dict[str, Any]:
        contestants = self.rng.sample(self.population, min(self.tournament_size, len(self.population)))
        return max(contestants, key=lambda member: member["fitness"])

    def _propose(self) -> Proposal:
        if len(self.population) < self.population_size:
            return super()._propose()
        first = self._tournament()
        if len(self.population) > 1 and self.rng.random() < self.crossover_prob:
            second = self._tournament()
            if second["hash"] != first["hash"]:
                child = self.space.crossover(Genome.from_dict(first["genome"]), Genome.from_dict(second["genome"]), self.rng)
                return self.proposal(child, "crossover", (first["hash"], second["hash"]))
        child = self.space.mutate(Genome.from_dict(first["genome"]), self.rng)
        return self.proposal(child, "mutation", (first["hash"],))

    def tell(self, results: Sequence[CandidateResult]) -> None:
        super().tell(results)
        for result in results:
            if result.ok:
                self.population.append({"genome": result.genome.to_dict(), "hash": result.hash, "fitness": result.fitness})
        del self.population[: max(0, len(self.population) - self.population_size)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "population": list(self.population)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = list(state["population"])
