"""NSGA-II (Deb et al., 2002): maximise fitness while minimising a cost such as the parameter count.

The helpers at the top are pure functions on points whose objectives are all *minimised* (NSGA-II
itself uses ``(-fitness, cost)``); infinite values are allowed (a missing cost counts as +inf).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace
from nas_core.strategies.base import CandidateResult, register_strategy
from nas_core.strategies.genetic import GeneticAlgorithm

Point = Sequence[float]


# ---- pure helpers (every objective minimised) ---------------------------------------------------
def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and strictly better in at least one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Indices of ``points`` by front: the first front is dominated by nobody, the next only by the first, ...

    Fast non-dominated sort; indices within a front are in ascending order.
    """
    n = len(points)
    dominated: list[list[int]] = [[] for _ in range(n)]  # the points each point dominates
    dominators = [0] * n  # how many points dominate each point
    for p in range(n):
        for q in range(p + 1, n):
            if dominates(points[p], points[q]):
                dominated[p].append(q)
                dominators[q] += 1
            elif dominates(points[q], points[p]):
                dominated[q].append(p)
                dominators[p] += 1
    fronts: list[list[int]] = []
    current = [p for p in range(n) if dominators[p] == 0]
    while current:
        fronts.append(current)
        following: list[int] = []
        for p in current:
            for q in dominated[p]:
                dominators[q] -= 1
                if dominators[q] == 0:
                    following.append(q)
        current = sorted(following)
    return fronts


def _gap(high: float, low: float, span: float) -> float:
    """One objective's normalised distance between a point's two neighbours."""
    if high == low:
        return 0.0
    if math.isinf(high - low):  # a neighbour at infinity: as far as the whole range
        return 1.0
    return (high - low) / span  # 0 when the range is infinite and the gap is not


def crowding_distance(front: Sequence[Point]) -> list[float]:
    """Crowding distance of each point of one front, in the order given.

    Per objective the two extreme points get infinity and every other point adds the gap between its
    neighbours divided by the objective's range. An objective in which all points are equal adds
    nothing (not even infinity for the extremes, which would be an arbitrary pick). A gap to an
    infinite value counts as the whole range. Fronts of one or two points are all extremes.
    """
    n = len(front)
    if n <= 2:
        return [math.inf] * n  # every point is an extreme
    distance = [0.0] * n
    for m in range(len(front[0])):
        order = sorted(range(n), key=lambda i: front[i][m])
        low, high = front[order[0]][m], front[order[-1]][m]
        if low == high:
            continue
        distance[order[0]] = distance[order[-1]] = math.inf
        span = high - low
        for k in range(1, n - 1):
            distance[order[k]] += _gap(front[order[k + 1]][m], front[order[k - 1]][m], span)
    return distance


def rank_and_crowding(points: Sequence[Point]) -> tuple[list[int], list[float]]:
    """Each point's front number (0 = non-dominated) and its crowding distance within that front."""
    ranks = [0] * len(points)
    crowding = [0.0] * len(points)
    for rank, front in enumerate(non_dominated_sort(points)):
        for i, distance in zip(front, crowding_distance([points[i] for i in front]), strict=True):
            ranks[i], crowding[i] = rank, distance
    return ranks, crowding


def select_survivors(points: Sequence[Point], k: int) -> list[int]:
    """Indices of the ``k`` survivors: whole fronts in order, then the least crowded of the next front.

    The result lists survivors by front, and within the partially taken front by decreasing crowding
    distance (ties by index).
    """
    chosen: list[int] = []
    for front in non_dominated_sort(points):
        if len(chosen) + len(front) <= k:
            chosen += front
            continue
        distance = crowding_distance([points[i] for i in front])
        by_crowding = sorted(range(len(front)), key=lambda j: -distance[j])
        chosen += [front[j] for j in by_crowding[: k - len(chosen)]]
        break
    return chosen


# ---- the strategy -------------------------------------------------------------------------------
@register_strategy("nsga2")
class NSGA2(GeneticAlgorithm):
    """NSGA-II over (maximise fitness, minimise ``metrics[cost_metric]``); a missing cost counts as +inf.

    Breeding and generations work as in :class:`GeneticAlgorithm`, but parents win binary tournaments
    on (front rank, -crowding distance) and survival keeps whole fronts, then the least crowded.
    ``pareto_front()`` is the non-dominated set of every successful candidate told so far.

    Told results it did not propose: as in :class:`GeneticAlgorithm` (a warm start's results are the first
    population, chosen by fronts and crowding), and they count in ``pareto_front()``.
    """

    name = "nsga2"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        constraint: Callable[[Genome], bool] | None = None,
        population_size: int = 8,
        tournament_size: int = 2,
        crossover_prob: float = 0.5,
        mutation_prob: float = 0.5,
        cost_metric: str = "params",
    ) -> None:
        super().__init__(
            space,
            seed=seed,
            constraint=constraint,
            population_size=population_size,
            tournament_size=tournament_size,
            crossover_prob=crossover_prob,
            mutation_prob=mutation_prob,
        )
        self.cost_metric = cost_metric
        self.front: list[dict[str, Any]] = []  # non-dominated successful candidates, in arrival order
        self._scores: tuple[list[int], list[float]] | None = None  # rank/crowding of the population (derived)

    @staticmethod
    def _point(member: dict[str, Any]) -> tuple[float, float]:
        cost = member["cost"]
        return (-member["fitness"], math.inf if cost is None else cost)

    def _member(self, result: CandidateResult) -> dict[str, Any]:
        cost = result.metrics.get(self.cost_metric)
        cost = float(cost) if cost is not None and math.isfinite(cost) else None  # None: +inf, kept JSON-clean
        return {**super()._member(result), "cost": cost}

    def _survivors(self, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [candidates[i] for i in select_survivors([self._point(m) for m in candidates], self.population_size)]

    def _tournament(self, exclude: str | None = None) -> dict[str, Any]:
        """Of ``tournament_size`` random members (other than ``exclude``), the lowest front rank, then the
        largest crowding distance; ties: drawn first."""
        if self._scores is None:
            self._scores = rank_and_crowding([self._point(m) for m in self.population])
        ranks, crowding = self._scores
        pool = [i for i, m in enumerate(self.population) if m["hash"] != exclude]
        contestants = self.rng.sample(pool, min(self.tournament_size, len(pool)))
        return self.population[min(contestants, key=lambda i: (ranks[i], -crowding[i]))]

    def _end_generation(self) -> None:
        super()._end_generation()
        self._scores = None

    def tell(self, results: Sequence[CandidateResult]) -> None:
        super().tell(results)
        known = {m["hash"] for m in self.front}
        fresh: dict[str, dict[str, Any]] = {}
        for result in results:
            if result.ok and result.hash not in known:
                fresh.setdefault(result.hash, self._member(result))
        if fresh:
            candidates = self.front + list(fresh.values())
            first = non_dominated_sort([self._point(m) for m in candidates])[0]
            self.front = [candidates[i] for i in first]

    def pareto_front(self) -> list[dict[str, Any]]:
        """The non-dominated successful candidates, cheapest first: identity, genome, fitness, cost.

        ``cost`` is None where the result had no finite ``cost_metric`` (ranked as +inf).
        """
        ordered = sorted(self.front, key=lambda m: (self._point(m)[1], -m["fitness"]))
        return [
            {"identity": m["hash"], "genome": copy.deepcopy(m["genome"]), "fitness": m["fitness"], "cost": m["cost"]}
            for m in ordered
        ]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "cost_metric": self.cost_metric, "front": copy.deepcopy(self.front)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.cost_metric = state["cost_metric"]
        self.front = copy.deepcopy(list(state["front"]))
        self._scores = None
