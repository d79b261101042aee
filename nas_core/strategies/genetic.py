"""A generational genetic algorithm with (mu + lambda) survival.

Random genomes until the population (mu) is full; then children of tournament winners, made by
crossover with a second winner (with ``crossover_prob``; the mate's tournament leaves out the first
parent) followed by mutation (with ``mutation_prob``, and always when the child equals a parent, as
it does without crossover). A generation's results are held back until the generation is
complete: then the best ``population_size`` of the old population plus the new children survive.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace
from nas_core.strategies.base import CandidateResult, Proposal, Strategy, register_strategy


@register_strategy("genetic")
class GeneticAlgorithm(Strategy):
    """Generational GA: parents stay fixed while a generation is out; survivors are the best of both.

    A generation is complete when every proposal asked for has its result, or when
    ``population_size`` results have come back since the last survival (so that a pipeline that
    always keeps some candidates in flight still advances). Failed results never enter the
    population; they only count as returned.

    Told results it did not propose count as returned offspring: told before the first ask (a warm
    start), nothing is pending, so they end a generation at once and the best ``population_size`` of
    them are the population the first ask breeds from.
    """

    name = "genetic"
    takes_population = True

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        constraint: Callable[[Genome], bool] | None = None,
        population_size: int = 8,
        tournament_size: int = 3,
        crossover_prob: float = 0.5,
        mutation_prob: float = 0.5,
    ) -> None:
        super().__init__(space, seed=seed, constraint=constraint)
        if population_size < 1 or tournament_size < 1:
            raise ValueError("population_size and tournament_size must be at least 1")
        if not (0.0 <= crossover_prob <= 1.0 and 0.0 <= mutation_prob <= 1.0):
            raise ValueError("crossover_prob and mutation_prob must be within [0, 1]")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        self.mutation_prob = mutation_prob
        self.population: list[dict[str, Any]] = []  # survivors, best first: {"genome", "hash", "fitness", ...}
        self.offspring: list[dict[str, Any]] = []  # successful results of the open generation, in arrival order
        self.pending: list[str] = []  # identities asked for whose results have not come back
        self.returned = 0  # results (failures included) since the last survival
        self.generation = 0  # completed generations

    # ---- hooks for subclasses ------------------------------------------------------------
    def _member(self, result: CandidateResult) -> dict[str, Any]:
        return {"genome": result.genome.to_dict(), "hash": result.hash, "fitness": result.fitness}

    def _survivors(self, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The best ``population_size`` by fitness; ties keep the older member (stable sort)."""
        return sorted(candidates, key=lambda member: -member["fitness"])[: self.population_size]

    def _tournament(self, exclude: str | None = None) -> dict[str, Any]:
        """The fittest of ``tournament_size`` random members (other than ``exclude``); ties: drawn first."""
        pool = [m for m in self.population if m["hash"] != exclude]
        contestants = self.rng.sample(pool, min(self.tournament_size, len(pool)))
        return max(contestants, key=lambda member: member["fitness"])

    # ---- ask / tell ----------------------------------------------------------------------
    def _propose(self) -> Proposal:
        if len(self.population) < self.population_size:
            return super()._propose()
        parents = [self._tournament()]
        child = Genome.from_dict(parents[0]["genome"])
        if len(self.population) > 1 and self.rng.random() < self.crossover_prob:
            second = self._tournament(exclude=parents[0]["hash"])  # the mate is another member
            child = self.space.crossover(child, Genome.from_dict(second["genome"]), self.rng)
            parents.append(second)
        origin = "crossover" if len(parents) == 2 else "mutation"
        parent_hashes = [p["hash"] for p in parents]
        if origin == "mutation" or self.identity(child) in parent_hashes or self.rng.random() < self.mutation_prob:
            child = self.space.mutate(child, self.rng)
        return self.proposal(child, origin, parent_hashes)

    def ask(self, n: int) -> list[Proposal]:
        proposals = super().ask(n)
        self.pending += [p.hash for p in proposals]
        return proposals

    def tell(self, results: Sequence[CandidateResult]) -> None:
        super().tell(results)
        members = {m["hash"] for m in self.population} | {m["hash"] for m in self.offspring}
        for result in results:
            if result.hash in self.pending:
                self.pending.remove(result.hash)
            self.returned += 1
            if result.ok and result.hash not in members:
                self.offspring.append(self._member(result))
                members.add(result.hash)
        if not self.pending or self.returned >= self.population_size:
            self._end_generation()

    def _end_generation(self) -> None:
        if self.returned == 0 and not self.offspring:
            return
        self.population = self._survivors(self.population + self.offspring)
        self.offspring = []
        self.returned = 0
        self.generation += 1

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "population": copy.deepcopy(self.population),
            "offspring": copy.deepcopy(self.offspring),
            "pending": list(self.pending),
            "returned": self.returned,
            "generation": self.generation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = copy.deepcopy(list(state["population"]))
        self.offspring = copy.deepcopy(list(state["offspring"]))
        self.pending = list(state["pending"])
        self.returned = int(state["returned"])
        self.generation = int(state["generation"])
