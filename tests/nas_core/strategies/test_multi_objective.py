"""NSGA-II: non-dominated sorting and crowding distance by hand, survival, tournaments, the Pareto front."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from nas_core.genome import Genome
from nas_core.spaces import create_space
from nas_core.strategies import NSGA2, STRATEGIES, CandidateResult, create_strategy
from nas_core.strategies.multi_objective import (
    crowding_distance,
    dominates,
    non_dominated_sort,
    rank_and_crowding,
    select_survivors,
)

INF = math.inf
MU = 6
SPACE = create_space("image")
WEIGHTS = np.random.default_rng(2).normal(size=SPACE.encode(SPACE.sample(random.Random(0))).shape)


# ---- the pure helpers (all objectives minimised) ----------------------------------------------


def test_dominates():
    assert dominates((1, 2), (2, 2))
    assert dominates((1, 2), (2, 3))
    assert not dominates((1, 2), (1, 2))  # equal: neither dominates
    assert not dominates((1, 3), (2, 2)) and not dominates((2, 2), (1, 3))
    assert dominates((1, 5), (1, INF)) and not dominates((1, INF), (1, 5))
    assert not dominates((1, INF), (1, INF))


def test_non_dominated_sort_by_hand():
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 6), (4, 4)]
    # (1,5), (2,3), (4,1): nobody is better in both. (3,4) is beaten by (2,3); (2,6) by (1,5);
    # (4,4) by (2,3) and (3,4); (5,5) by everything but (2,6). Peeling front by front:
    assert non_dominated_sort(points) == [[0, 1, 2], [3, 5], [6], [4]]


def test_non_dominated_sort_keeps_equal_points_together_and_handles_infinity():
    points = [(2, 2), (1, INF), (2, 2), (3, 1), (1, 7), (3, 3)]
    # (1,7) dominates (1,inf); (2,2) twice and (3,1) and (1,7) are mutually non-dominated
    assert non_dominated_sort(points) == [[0, 2, 3, 4], [1, 5]]
    assert non_dominated_sort([]) == []
    assert non_dominated_sort([(0.5, 0.5)]) == [[0]]


def test_crowding_distance_by_hand():
    front = [(0, 10), (1, 6), (3, 3), (10, 0)]
    # objective 0 (range 10): (1,6) lies between 0 and 3 -> 0.3; (3,3) between 1 and 10 -> 0.9
    # objective 1 (range 10): (3,3) lies between 0 and 6 -> 0.6; (1,6) between 3 and 10 -> 0.7
    assert crowding_distance(front) == pytest.approx([INF, 1.0, 1.5, INF])
    # the order given does not matter
    assert crowding_distance(front[::-1]) == pytest.approx([INF, 1.5, 1.0, INF])


def test_crowding_distance_edge_cases():
    assert crowding_distance([]) == []
    assert crowding_distance([(1, 2)]) == [INF]
    assert crowding_distance([(1, 2), (2, 1)]) == [INF, INF]
    # an objective without spread adds nothing, not even infinity for its "extremes"
    assert crowding_distance([(2, 2), (1, 2), (3, 2)]) == pytest.approx([1.0, INF, INF])
    # fitness 0.9 / 0.8 / 0.7 (negated), costs inf / 100 / 50: the gap to the infinite cost is the whole range
    assert crowding_distance([(-0.9, INF), (-0.8, 100.0), (-0.7, 50.0)]) == pytest.approx([INF, 2.0, INF])


def test_rank_and_crowding():
    points = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 6), (4, 4)]
    ranks, crowding = rank_and_crowding(points)
    assert ranks == [0, 0, 0, 1, 3, 1, 2]
    # front 0 (1,5),(2,3),(4,1): (2,3) gets (4-1)/3 + (5-1)/4 = 2
    assert crowding[1] == pytest.approx(2.0)
    assert [crowding[i] for i in (0, 2, 3, 4, 5, 6)] == [INF] * 6


def test_select_survivors_whole_fronts_then_the_least_crowded():
    points = [(0, 0), (1, 10), (2, 9), (5, 5), (10, 1)]
    # front 0 is (0,0); front 1 is the other four, where the extremes are infinitely far and
    # (5,5) (distance 8/9 + 8/9) is less crowded than (2,9) (distance 4/9 + 5/9)
    assert select_survivors(points, 1) == [0]
    assert select_survivors(points, 3) == [0, 1, 4]
    assert select_survivors(points, 4) == [0, 1, 4, 3]
    assert select_survivors(points, 5) == [0, 1, 2, 3, 4]
    assert select_survivors(points, 9) == [0, 1, 2, 3, 4]
    assert select_survivors([(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (2, 6), (4, 4)], 6) == [0, 1, 2, 3, 5, 6]


# ---- the strategy ---------------------------------------------------------------------------


def fitness(genome: Genome) -> float:
    return float(1 / (1 + np.exp(-WEIGHTS @ SPACE.encode(genome))))


def cost(genome: Genome) -> float:
    """A deterministic stand-in for the parameter count: channels times kernel area, plus edges."""
    total = sum(n.settings.get("channels", 8) * n.settings.get("kernel", 1) ** 2 for n in genome.nodes)
    return float(total + len(genome.edges))


def ok(genome: Genome, **metrics: float) -> CandidateResult:
    return CandidateResult(genome, "ok", fitness(genome), metrics={"params": cost(genome), **metrics})


def failed(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "failed", None, reason="diverged: test")


def nsga2(seed: int = 0, **kwargs) -> NSGA2:
    return NSGA2(SPACE, seed=seed, population_size=MU, **kwargs)


def point(result: CandidateResult, metric: str = "params") -> tuple[float, float]:
    return (-result.fitness, result.metrics.get(metric, INF))


def test_registered_with_the_population_argument():
    strategy = create_strategy("nsga2", SPACE, seed=0, population=5)
    assert "nsga2" in STRATEGIES and isinstance(strategy, NSGA2)
    assert (strategy.population_size, strategy.tournament_size, strategy.cost_metric) == (5, 2, "params")


def search(strategy: NSGA2, generations: int, fail_every: int = 0, drop_cost_every: int = 0) -> list[CandidateResult]:
    """Ask/tell a generation at a time; return every result told."""
    told: list[CandidateResult] = []
    for _ in range(generations):
        results = []
        for proposal in strategy.ask(MU):
            k = len(told) + len(results) + 1
            if fail_every and k % fail_every == 0:
                results.append(failed(proposal.genome))
            elif drop_cost_every and k % drop_cost_every == 0:
                results.append(CandidateResult(proposal.genome, "ok", fitness(proposal.genome)))
            else:
                results.append(ok(proposal.genome))
        strategy.tell(results)
        told += results
    return told


def test_pareto_front_is_exactly_the_non_dominated_successes():
    strategy = nsga2(seed=1)
    told = search(strategy, 8, fail_every=7, drop_cost_every=5)
    successes = [r for r in told if r.ok]
    front = strategy.pareto_front()
    assert len(front) >= 2
    front_points = [(-m["fitness"], INF if m["cost"] is None else m["cost"]) for m in front]
    # nothing told dominates a front member ...
    assert not any(dominates(point(r), p) for r in successes for p in front_points)
    # ... and every success outside the front is dominated by a front member
    front_ids = {m["identity"] for m in front}
    assert all(any(dominates(p, point(r)) for p in front_points) for r in successes if r.hash not in front_ids)
    assert not front_ids & {r.hash for r in told if not r.ok}
    # cheapest first, with genomes that rebuild to the identities
    assert [p[1] for p in front_points] == sorted(p[1] for p in front_points)
    assert all(SPACE.identity(Genome.from_dict(m["genome"])) == m["identity"] for m in front)


def test_missing_cost_counts_as_infinite():
    strategy = nsga2()
    a, b = SPACE.sample(random.Random(1)), SPACE.sample(random.Random(2))
    strategy.tell([CandidateResult(a, "ok", 0.8), CandidateResult(b, "ok", 0.8, metrics={"params": 1e6})])
    assert [m["identity"] for m in strategy.pareto_front()] == [SPACE.identity(b)]
    strategy.tell([CandidateResult(SPACE.sample(random.Random(3)), "ok", 0.9)])
    front = strategy.pareto_front()
    assert [m["cost"] for m in front] == [1e6, None]  # the better one without a cost is kept, as +inf
    assert json.loads(json.dumps(front)) == front


def test_cost_metric_is_configurable():
    strategy = nsga2(cost_metric="flops")
    a, b = SPACE.sample(random.Random(1)), SPACE.sample(random.Random(2))
    strategy.tell(
        [
            CandidateResult(a, "ok", 0.8, metrics={"params": 10.0, "flops": 500.0}),
            CandidateResult(b, "ok", 0.8, metrics={"params": 20.0, "flops": 100.0}),
        ]
    )
    assert [(m["identity"], m["cost"]) for m in strategy.pareto_front()] == [(SPACE.identity(b), 100.0)]


def test_survivors_are_whole_fronts_then_the_least_crowded():
    strategy = nsga2(seed=2)
    for _ in range(8):
        before = list(strategy.population)
        proposals = strategy.ask(MU)
        results = [ok(p.genome) for p in proposals]
        strategy.tell(results)
        candidates = [(m["hash"], (-m["fitness"], m["cost"])) for m in before] + [(r.hash, point(r)) for r in results]
        expected = [candidates[i][0] for i in select_survivors([c[1] for c in candidates], MU)]
        assert [m["hash"] for m in strategy.population] == expected
    ranks, _ = rank_and_crowding([(-m["fitness"], m["cost"]) for m in strategy.population])
    assert ranks == sorted(ranks)


def test_children_are_bred_from_the_population():
    strategy = nsga2(seed=3)
    first = strategy.ask(MU)
    assert {p.origin for p in first} == {"sample"}
    strategy.tell([ok(p.genome) for p in first])
    origins = set()
    for _ in range(5):
        members = {m["hash"] for m in strategy.population}
        proposals = strategy.ask(MU)
        for proposal in proposals:
            origins.add(proposal.origin)
            assert set(proposal.parents) <= members
            assert len(proposal.parents) == (2 if proposal.origin == "crossover" else 1)
        strategy.tell([ok(p.genome) for p in proposals])
    assert origins == {"mutation", "crossover"}


def test_binary_tournament_prefers_the_lower_front_then_the_less_crowded():
    strategy = nsga2(seed=4)
    # (fitness, cost): front 0 is a, b, c (b crowded in the middle), front 1 is d, front 2 is e
    members = {"a": (0.9, 30.0), "b": (0.8, 20.0), "c": (0.5, 10.0), "d": (0.7, 25.0), "e": (0.6, 40.0)}
    strategy.population = [{"genome": {}, "hash": h, "fitness": f, "cost": c} for h, (f, c) in members.items()]
    picked = [strategy._tournament()["hash"] for _ in range(400)]
    assert "e" not in picked  # the worst front never wins a tournament of two distinct members
    assert picked.count("a") > picked.count("b") and picked.count("c") > picked.count("b")
    assert picked.count("b") > picked.count("d")


def test_a_generation_holds_back_results_until_all_of_it_is_in():
    strategy = nsga2(seed=5)
    search(strategy, 1)
    parents = [m["hash"] for m in strategy.population]
    children = strategy.ask(MU)
    strategy.tell([ok(p.genome) for p in children[:-1]])
    assert [m["hash"] for m in strategy.population] == parents
    assert all(set(p.parents) <= set(parents) for p in strategy.ask(2))
    strategy.tell([ok(children[-1].genome)])
    assert [m["hash"] for m in strategy.population] != parents


def test_restored_mid_generation_continues_exactly_like_the_original():
    original = nsga2(seed=6)
    search(original, 2, drop_cost_every=3)
    out = original.ask(MU)
    original.tell([ok(p.genome) for p in out[:2]])
    restored = nsga2(seed=0, cost_metric="flops")  # everything comes from the state
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.cost_metric == "params"

    def rest(strategy):
        strategy.tell([ok(p.genome) for p in out[2:]])
        log = search(strategy, 3)
        return [r.hash for r in log], strategy.pareto_front(), [m["hash"] for m in strategy.population]

    assert rest(restored) == rest(original)


def test_state_is_strict_json():
    strategy = nsga2(seed=7)
    search(strategy, 3, drop_cost_every=2)
    text = json.dumps(strategy.state_dict(), allow_nan=False)  # no Infinity for missing costs
    assert json.loads(text)["front"]
