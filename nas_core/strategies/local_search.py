"""Best-improvement local search with random restarts (White et al., 2020, "Local search is state
of the art for NAS benchmarks")."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace
from nas_core.strategies.base import CandidateResult, Proposal, Strategy, register_strategy


@register_strategy("local")
class LocalSearch(Strategy):
    """Evaluate every unseen neighbour of the current point, then climb to the best one or restart.

    - The search starts (and restarts) from a random genome: the best successful random (or enqueued)
      genome not yet used as a starting point, or, while there is none, new random samples (origin
      ``sample``; with a prior, prior draws, origin ``prior``: see ``Strategy.use_prior``).
    - Told results it did not propose (e.g. a warm start with earlier searches' results) count like its
      own random samples: successful ones are starting points (so a warm-started search climbs from the
      best of them first) and known neighbour results.
    - Once the current point is evaluated, its unseen neighbours (``space.neighbours``, in a seeded
      random order) are proposed with origin ``local`` and the current point as parent.
    - When every neighbour has its result (neighbours seen earlier count with their known results),
      the search moves to the best neighbour if it beats the current point; otherwise the current
      point is a local optimum and the search restarts. A point whose neighbours were all seen
      already is decided at once.
    - While the current point's neighbours are all out for evaluation, further asks are filled with
      random samples, which become the starting points of later restarts.
    """

    name = "local"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        constraint: Callable[[Genome], bool] | None = None,
    ) -> None:
        super().__init__(space, seed=seed, constraint=constraint)
        self.current: dict[str, Any] | None = None  # {"genome", "hash", "fitness"}
        self.neighbourhood: list[str] = []  # identities of the current point's neighbours, in the space's order
        self.todo: list[int] = []  # positions (in the space's order) of neighbours still to propose, in proposal order
        self.pending: dict[str, str] = {}  # identity -> origin of every proposal whose result has not come back
        self.starts: list[dict[str, Any]] = []  # successful random genomes not yet used as a starting point
        self.fitness: dict[str, float] = {}  # identity -> fitness of every successful result
        self.best: dict[str, Any] | None = None  # the best successful result so far
        self.optima: list[dict[str, Any]] = []  # local optima reached: {"hash", "fitness"}
        self._neighbours: tuple[str, list[Genome]] | None = None  # (current identity, its neighbours), derived

    # ---- the current point's neighbourhood -----------------------------------------------
    def _neighbour_genomes(self) -> list[Genome]:
        """The current point's neighbours in the space's (fixed) order; cached, recomputed after a restore."""
        assert self.current is not None
        if self._neighbours is None or self._neighbours[0] != self.current["hash"]:
            genome = Genome.from_dict(self.current["genome"])
            genomes = self.space.neighbours(genome)
            self._neighbours = (self.current["hash"], genomes)
        return self._neighbours[1]

    def _settle(self, member: dict[str, Any]) -> None:
        """Make ``member`` the current point and plan its unseen neighbours in a seeded random order."""
        self.current = member
        self.starts = [start for start in self.starts if start["hash"] != member["hash"]]
        genomes = self._neighbour_genomes()
        self.neighbourhood = [self.identity(g) for g in genomes]
        order = list(range(len(genomes)))
        self.rng.shuffle(order)
        self.todo = [i for i in order if self.neighbourhood[i] not in self.seen]

    def _best_neighbour(self) -> dict[str, Any] | None:
        """The evaluated neighbour with the highest fitness (the first in the space's order on ties)."""
        best: int | None = None
        for i, identity in enumerate(self.neighbourhood):
            if identity in self.fitness and (best is None or self.fitness[identity] > self.fitness[self.neighbourhood[best]]):
                best = i
        if best is None:
            return None
        genome = self._neighbour_genomes()[best]
        return {"genome": genome.to_dict(), "hash": self.neighbourhood[best], "fitness": self.fitness[self.neighbourhood[best]]}

    def _advance(self) -> None:
        """Start, climb or restart for as long as the results at hand allow."""
        while True:
            if self.current is None:
                if not self.starts:
                    return
                first = max(range(len(self.starts)), key=lambda i: self.starts[i]["fitness"])
                self._settle(self.starts.pop(first))
                continue
            if self.todo or any(identity in self.pending for identity in self.neighbourhood):
                return
            neighbour = self._best_neighbour()
            if neighbour is not None and neighbour["fitness"] > self.current["fitness"]:
                self._settle(neighbour)
            else:
                self.optima.append({"hash": self.current["hash"], "fitness": self.current["fitness"]})
                self.current, self.neighbourhood, self.todo = None, [], []

    # ---- ask / tell ----------------------------------------------------------------------
    def _propose(self) -> Proposal:
        while True:
            self._advance()
            if self.current is None or not self.todo:
                return super()._propose()
            proposal = self.proposal(self._neighbour_genomes()[self.todo.pop(0)], "local", [self.current["hash"]])
            # checked here (ask checks again) so that the neighbour counts as out for evaluation at once:
            # a neighbour skipped as seen or outside the constraint may leave the current point decided
            if self.allowed(proposal):
                self.pending[proposal.hash] = proposal.origin
                return proposal

    def ask(self, n: int) -> list[Proposal]:
        proposals = super().ask(n)
        for proposal in proposals:
            self.pending.setdefault(proposal.hash, proposal.origin)
        return proposals

    def tell(self, results: Sequence[CandidateResult]) -> None:
        super().tell(results)
        for result in results:
            origin = self.pending.pop(result.hash, None)
            if not result.ok or result.hash in self.fitness:
                continue
            member = {"genome": result.genome.to_dict(), "hash": result.hash, "fitness": result.fitness}
            self.fitness[result.hash] = result.fitness
            if self.best is None or result.fitness > self.best["fitness"]:
                self.best = member
            if origin in ("sample", "prior", "enqueued", None):  # random, prior, enqueued or told-unasked: starting points
                self.starts.append(member)
        self._advance()

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                **super().state_dict(),
                "current": self.current,
                "neighbourhood": self.neighbourhood,
                "todo": self.todo,
                "pending": self.pending,
                "starts": self.starts,
                "fitness": self.fitness,
                "best": self.best,
                "optima": self.optima,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        state = copy.deepcopy(state)
        self.current = state["current"]
        self.neighbourhood = list(state["neighbourhood"])
        self.todo = [int(i) for i in state["todo"]]
        self.pending = dict(state["pending"])
        self.starts = list(state["starts"])
        self.fitness = dict(state["fitness"])
        self.best = state["best"]
        self.optima = list(state["optima"])
        self._neighbours = None
        if self.current is not None and [self.identity(g) for g in self._neighbour_genomes()] != self.neighbourhood:
            raise ValueError("the space lists the current point's neighbours differently than when the state was saved")
