"""The generational genetic algorithm: initial sampling, breeding, (mu + lambda) survival, generations."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from nas_core.genome import Genome
from nas_core.spaces import create_space
from nas_core.strategies import STRATEGIES, CandidateResult, GeneticAlgorithm, create_strategy

MU = 4
SPACE = create_space("image")
WEIGHTS = np.random.default_rng(0).normal(size=SPACE.encode(SPACE.sample(random.Random(0))).shape)


def fitness(genome: Genome) -> float:
    """A deterministic stand-in for validation accuracy: a fixed linear function of the encoding."""
    return float(WEIGHTS @ SPACE.encode(genome))


def ok(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "ok", fitness(genome))


def failed(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "failed", None, reason="diverged: test")


def ga(seed: int = 0, **kwargs) -> GeneticAlgorithm:
    return GeneticAlgorithm(SPACE, seed=seed, population_size=MU, **kwargs)


def best_of(members: list[dict], k: int = MU) -> list[str]:
    return [m["hash"] for m in sorted(members, key=lambda m: -m["fitness"])[:k]]


def test_registered_with_the_population_argument():
    strategy = create_strategy("genetic", SPACE, seed=0, population=5)
    assert "genetic" in STRATEGIES
    assert isinstance(strategy, GeneticAlgorithm)
    assert (strategy.population_size, strategy.tournament_size) == (5, 3)
    assert (strategy.crossover_prob, strategy.mutation_prob) == (0.5, 0.5)


def test_samples_until_the_population_is_full_then_breeds_from_it():
    strategy = ga(seed=1)
    first = strategy.ask(MU)
    assert [p.origin for p in first] == ["sample"] * MU
    assert all(p.parents == () for p in first)
    strategy.tell([ok(p.genome) for p in first])
    assert sorted(m["hash"] for m in strategy.population) == sorted(p.hash for p in first)
    origins = set()
    for _ in range(8):
        members = {m["hash"] for m in strategy.population}
        proposals = strategy.ask(MU)
        assert len(proposals) == MU
        for proposal in proposals:
            origins.add(proposal.origin)
            assert set(proposal.parents) <= members
            assert proposal.hash not in proposal.parents
            assert len(proposal.parents) == (2 if proposal.origin == "crossover" else 1)
            assert len(set(proposal.parents)) == len(proposal.parents)
        strategy.tell([ok(p.genome) for p in proposals])
    assert origins == {"mutation", "crossover"}


def test_survivors_are_the_best_of_the_old_population_and_the_children():
    strategy = ga(seed=2)
    counter = 0
    for _ in range(10):
        before = list(strategy.population)
        proposals = strategy.ask(MU)
        results = []
        for proposal in proposals:
            counter += 1
            results.append(failed(proposal.genome) if counter % 5 == 0 else ok(proposal.genome))
        strategy.tell(results)
        children = [{"hash": r.hash, "fitness": r.fitness} for r in results if r.ok]
        assert [m["hash"] for m in strategy.population] == best_of(before + children)
        failures = {r.hash for r in results if not r.ok}
        assert not failures & {m["hash"] for m in strategy.population}
    assert strategy.generation == 10


def test_elitism_never_lowers_any_rank_of_the_population():
    strategy = ga(seed=3)
    previous = initial = None
    for _ in range(8):
        proposals = strategy.ask(MU)
        strategy.tell([ok(p.genome) for p in proposals])
        current = [m["fitness"] for m in strategy.population]
        assert current == sorted(current, reverse=True)
        if previous is not None and len(previous) == MU:
            assert all(now >= then for now, then in zip(current, previous, strict=True))
        previous = current
        if initial is None:
            initial = current
    assert sum(previous) > sum(initial)  # and the search did improve on the random start


def test_tournament_of_three_never_picks_one_of_the_two_worst():
    strategy = ga(seed=4, tournament_size=3)
    strategy.population = [{"genome": {}, "hash": f"h{i}", "fitness": float(i)} for i in range(5)]
    picked = [strategy._tournament()["hash"] for _ in range(300)]
    assert set(picked) == {"h2", "h3", "h4"}
    assert picked.count("h4") > picked.count("h3") > picked.count("h2")


def test_a_generation_holds_back_results_until_all_of_it_is_in():
    strategy = ga(seed=5)
    strategy.tell([ok(p.genome) for p in strategy.ask(MU)])
    parents = [m["hash"] for m in strategy.population]
    first = strategy.ask(2)
    second = strategy.ask(2)  # asked again before any tell: same generation, same parents
    children = first + second
    assert all(set(p.parents) <= set(parents) for p in children)
    strategy.tell([ok(children[0].genome)])
    strategy.tell([failed(children[3].genome), ok(children[1].genome)])
    assert [m["hash"] for m in strategy.population] == parents  # not yet: one child is still out
    assert strategy.generation == 1
    extra = strategy.ask(1)
    assert all(set(p.parents) <= set(parents) for p in extra)  # still breeding from the same parents
    old = list(strategy.population)
    strategy.tell([ok(children[2].genome)])
    # the extra child is still out, but population_size results have come back: the generation ends
    assert strategy.pending == [extra[0].hash]
    assert strategy.generation == 2
    returned = [{"hash": c.hash, "fitness": fitness(c.genome)} for c in children[:3]]
    assert [m["hash"] for m in strategy.population] == best_of(old + returned)


def test_generations_advance_while_candidates_stay_in_flight():
    strategy = ga(seed=6)
    in_flight = strategy.ask(2 * MU)
    generations = []
    for _ in range(6):
        strategy.tell([ok(p.genome) for p in in_flight[:MU]])
        in_flight = in_flight[MU:] + strategy.ask(MU)
        generations.append(strategy.generation)
    assert strategy.pending  # never empty...
    assert generations == list(range(1, 7))  # ...yet every MU results make a generation


def test_initial_sampling_continues_while_failures_leave_the_population_short():
    strategy = ga(seed=7)
    proposals = strategy.ask(MU)
    strategy.tell([failed(proposals[0].genome)] + [ok(p.genome) for p in proposals[1:]])
    assert len(strategy.population) == MU - 1
    assert [p.origin for p in strategy.ask(MU)] == ["sample"] * MU


class SpySpace:
    """The image space, logging crossovers and mutations; its crossover can be made to return a parent."""

    def __init__(self, clone_parent: bool) -> None:
        self.clone_parent = clone_parent
        self.events: list[tuple] = []

    def __getattr__(self, name):
        return getattr(SPACE, name)

    def mutate(self, genome, rng):
        self.events.append(("mutate", genome))
        return SPACE.mutate(genome, rng)

    def crossover(self, a, b, rng):
        child = a if self.clone_parent else SPACE.crossover(a, b, rng)
        self.events.append(("crossover", child, {SPACE.identity(a), SPACE.identity(b)}))
        return child


def bred(space: SpySpace, **kwargs) -> list:
    strategy = GeneticAlgorithm(space, seed=8, population_size=MU, **kwargs)
    strategy.tell([ok(p.genome) for p in strategy.ask(MU)])
    space.events.clear()
    return strategy.ask(3 * MU)


def followed_by_its_mutation(events, i) -> bool:
    return i + 1 < len(events) and events[i + 1][0] == "mutate" and events[i + 1][1] is events[i][1]


def test_a_crossover_child_equal_to_a_parent_is_always_mutated():
    space = SpySpace(clone_parent=True)
    bred(space, crossover_prob=1.0, mutation_prob=0.0)
    crossovers = [i for i, event in enumerate(space.events) if event[0] == "crossover"]
    assert len(crossovers) >= MU
    assert all(followed_by_its_mutation(space.events, i) for i in crossovers)


def test_with_mutation_probability_zero_a_new_crossover_child_is_not_mutated():
    space = SpySpace(clone_parent=False)
    proposals = bred(space, crossover_prob=1.0, mutation_prob=0.0)
    assert sum(p.origin == "crossover" for p in proposals) == len(proposals)  # the mate is never the parent
    new = [i for i, e in enumerate(space.events) if e[0] == "crossover" and SPACE.identity(e[1]) not in e[2]]
    same = [i for i, e in enumerate(space.events) if e[0] == "crossover" and SPACE.identity(e[1]) in e[2]]
    assert len(new) >= 2 * MU
    assert not any(followed_by_its_mutation(space.events, i) for i in new)
    assert all(followed_by_its_mutation(space.events, i) for i in same)


def test_with_mutation_probability_one_every_crossover_child_is_mutated():
    space = SpySpace(clone_parent=False)
    bred(space, crossover_prob=1.0, mutation_prob=1.0)
    crossovers = [i for i, event in enumerate(space.events) if event[0] == "crossover"]
    assert len(crossovers) >= MU
    assert all(followed_by_its_mutation(space.events, i) for i in crossovers)


def test_without_crossover_every_child_is_a_mutation_of_one_parent():
    proposals = bred(SpySpace(clone_parent=False), crossover_prob=0.0)
    assert {p.origin for p in proposals} == {"mutation"}
    assert all(len(p.parents) == 1 for p in proposals)


def test_restored_mid_generation_continues_exactly_like_the_original():
    original = ga(seed=9)
    original.tell([ok(p.genome) for p in original.ask(MU)])
    out = original.ask(3)
    original.tell([ok(out[0].genome)])  # two children still out
    restored = ga(seed=123)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.pending == original.pending == [p.hash for p in out[1:]]

    def rest(strategy):
        strategy.tell([ok(p.genome) for p in out[1:]])
        log = []
        for _ in range(3):
            proposals = strategy.ask(MU)
            log.append([(p.hash, p.origin, p.parents) for p in proposals])
            strategy.tell([ok(p.genome) for p in proposals])
        return log, [m["hash"] for m in strategy.population]

    assert rest(restored) == rest(original)


@pytest.mark.parametrize(
    "kwargs", [{"population_size": 0}, {"tournament_size": 0}, {"crossover_prob": -0.1}, {"mutation_prob": 1.5}]
)
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        GeneticAlgorithm(SPACE, seed=0, **{"population_size": MU, **kwargs})
