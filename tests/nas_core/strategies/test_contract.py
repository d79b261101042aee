"""The ask/tell contract of every registered strategy on every registered space, and regularized evolution's rules."""

from __future__ import annotations

import functools
import hashlib
import json
import random

import pytest

from nas_core.genome import Genome
from nas_core.spaces import create_space, list_spaces
from nas_core.strategies import STRATEGIES, CandidateResult, RegularizedEvolution, create_strategy, list_strategies
from nas_core.strategies.base import PRIOR_POOL

POPULATION = 4
GENERATIONS = 6
SHORT = 4  # generations of the checks run on every (strategy, space) pair
HPARAMS = {"lr": [0.1, 0.01], "optimizer": ["adam", "sgd"]}
SPACE_CASES = [*list_spaces(), "image+hparams"]  # every registered space, and one with searched hyperparameters
PAIRS = [(strategy, space) for strategy in list_strategies() for space in SPACE_CASES]


@functools.cache  # one instance per case: BO caches enumerations per space object (4 at most)
def space_of(case: str):
    name, _, joint = case.partition("+")
    return create_space(name, hparams=HPARAMS if joint else None)


def score(identity: str) -> float:
    """A deterministic stand-in for validation accuracy that differs between architectures of any space."""
    return int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16) / 2**32


def fitness(genome: Genome) -> float:
    return len(genome.edges) / 10


def ok_result(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "ok", fitness(genome))


def failed_result(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "failed", None, reason="diverged: test")


def result_of(proposal, failed: bool = False) -> CandidateResult:
    """The result of a proposal, keyed by its identity in the space; every result has a cost for NSGA-II."""
    if failed:
        return CandidateResult(proposal.genome, "failed", None, reason="diverged: test", hash=proposal.hash)
    cost = {"params": 1e6 * score(proposal.hash[::-1])}
    return CandidateResult(proposal.genome, "ok", score(proposal.hash), metrics=cost, hash=proposal.hash)


def make(name: str, seed: int = 0, space: str = "image"):
    return create_strategy(name, space_of(space), seed=seed, population=POPULATION)


def run_search(strategy, generations: int = GENERATIONS, fail_every: int = 0) -> list[list[tuple[str, str, tuple[str, ...]]]]:
    """ask(4), evaluate deterministically (every ``fail_every``-th proposal fails), tell; each generation's proposals."""
    log, count = [], 0
    for _ in range(generations):
        proposals = strategy.ask(POPULATION)
        log.append([(p.hash, p.origin, p.parents) for p in proposals])
        results = []
        for proposal in proposals:
            count += 1
            results.append(result_of(proposal, failed=bool(fail_every) and count % fail_every == 0))
        strategy.tell(results)
    return log


def hashes(log) -> list[str]:
    return [h for generation in log for h, _, _ in generation]


def json_round_trip(state):
    return json.loads(json.dumps(state))


def chain_genome(*ops: tuple[str, dict]) -> Genome:
    nodes = [{"id": "input", "op": "input"}]
    nodes += [{"id": f"n{i}", "op": op, "settings": settings} for i, (op, settings) in enumerate(ops)]
    nodes.append({"id": "output", "op": "output"})
    ids = [n["id"] for n in nodes]
    return Genome.from_dict({"nodes": nodes, "edges": [[a, b] for a, b in zip(ids, ids[1:], strict=False)]}).validate()


def conv(channels: int, kernel: int = 3, stride: int = 1) -> tuple[str, dict]:
    return ("conv", {"kernel": kernel, "channels": channels, "stride": stride})


def unseen_genome(strategy) -> Genome:
    """A genome of the strategy's space that it has not proposed (nor been told about) yet."""
    rng = random.Random(12345)
    for _ in range(1000):
        genome = strategy.space.sample(rng)
        if strategy.identity(genome) not in strategy.seen:
            return genome
    raise AssertionError("no unseen genome found")


# ---- the contract, for every registered strategy on every registered space ------------------------


@pytest.fixture(params=PAIRS, ids=[f"{strategy}-{space}" for strategy, space in PAIRS])
def pair(request):
    return request.param


@pytest.fixture(params=list_strategies())
def name(request):
    return request.param


def test_registry_is_not_empty_and_names_match_the_classes():
    assert {"random", "evolution", "genetic", "local", "nsga2", "bo"} <= set(list_strategies())
    for strategy in list_strategies():
        assert STRATEGIES[strategy].name == strategy
        assert make(strategy).name == strategy


def test_same_seed_proposes_the_same_sequence(pair):
    first, second = run_search(make(pair[0], 7, pair[1]), SHORT), run_search(make(pair[0], 7, pair[1]), SHORT)
    assert len(hashes(first)) == POPULATION * SHORT
    assert first == second


def test_other_seed_proposes_a_different_sequence(pair):
    assert hashes(run_search(make(pair[0], 7, pair[1]), SHORT)) != hashes(run_search(make(pair[0], 8, pair[1]), SHORT))


def test_proposals_are_valid_unseen_genomes_of_the_space(pair):
    strategy = make(pair[0], 5, pair[1])
    space = strategy.space
    proposed: list[str] = []
    for _ in range(SHORT + 2):
        proposals = strategy.ask(POPULATION)
        assert len(proposals) == POPULATION
        for proposal in proposals:
            assert proposal.genome.is_valid()
            assert proposal.hash == space.identity(proposal.genome)
            assert set(proposal.genome.hparams) == (set(HPARAMS) if pair[1].endswith("+hparams") else set())
        proposed += [p.hash for p in proposals]
        strategy.tell([result_of(p) for p in proposals])
    assert len(set(proposed)) == len(proposed), "no identity is proposed twice"


def test_tell_with_failures_keeps_the_search_going_and_deterministic(pair):
    strategy = make(pair[0], 3, pair[1])
    log = run_search(strategy, SHORT + 1, fail_every=3)
    proposed = hashes(log)
    assert len(proposed) == POPULATION * (SHORT + 1) and len(set(proposed)) == len(proposed)
    failed = proposed[2::3]
    assert set(failed) <= strategy.seen, "failed candidates count as seen: never proposed again"
    assert not set(failed) & {p.hash for p in strategy.ask(POPULATION)}
    assert run_search(make(pair[0], 3, pair[1]), SHORT + 1, fail_every=3) == log
    everything_failed = make(pair[0], 3, pair[1])
    run_search(everything_failed, 2, fail_every=1)
    assert len(everything_failed.ask(POPULATION)) == POPULATION


def test_state_dict_round_trips_through_json_and_the_restored_strategy_continues_exactly(pair):
    original = make(pair[0], 11, pair[1])
    run_search(original, 2, fail_every=5)
    state = original.state_dict()
    assert json_round_trip(state) == state
    assert state["name"] == pair[0]
    restored = make(pair[0], 999, pair[1])  # a different seed: everything must come from the state
    restored.load_state_dict(json_round_trip(state))
    assert restored.state_dict() == state
    assert run_search(restored, SHORT - 1) == run_search(original, SHORT - 1)


def test_enqueued_genome_is_proposed_first_and_survives_a_state_round_trip(pair):
    original = make(pair[0], 4, pair[1])
    proposed = hashes(run_search(original, 2))  # population-based strategies breed by now
    genome = unseen_genome(original)
    original.enqueue(genome)
    restored = make(pair[0], 4, pair[1])
    restored.load_state_dict(json_round_trip(original.state_dict()))
    for strategy in (original, restored):
        proposals = strategy.ask(POPULATION)
        assert proposals[0].hash == strategy.identity(genome)
        assert proposals[0].origin == "enqueued"
        assert proposals[0].genome.to_dict() == genome.to_dict()
        assert len(proposals) == POPULATION
        assert not {p.hash for p in proposals} & set(proposed)


def test_an_already_seen_enqueued_genome_is_not_proposed_again(pair):
    strategy = make(pair[0], 4, pair[1])
    first = strategy.ask(1)[0]
    strategy.tell([result_of(first)])
    strategy.enqueue(first.genome)
    assert first.hash not in {p.hash for p in strategy.ask(POPULATION)}


# ---- warm start: results told before the first ask, of architectures the strategy never proposed ----


def prior_results(strategy) -> list[CandidateResult]:
    """2 * POPULATION results of distinct architectures drawn with another RNG than any strategy's; every
    third failed; the first architecture told twice (two earlier searches may both have evaluated it)."""
    rng, results, identities = random.Random(2024), [], set()
    while len(results) < 2 * POPULATION:
        genome = strategy.space.sample(rng)
        identity = strategy.identity(genome)
        if identity not in identities:
            identities.add(identity)
            results.append(result_of(strategy.proposal(genome, "sample"), failed=len(results) % 3 == 2))
    return [*results, results[0]]


def warm(name: str, seed: int, space: str):
    """A fresh strategy told ``prior_results`` before its first ask, and those results."""
    strategy = make(name, seed, space)
    prior = prior_results(strategy)
    strategy.tell(prior)
    return strategy, prior


def test_after_a_warm_tell_asks_go_on_and_never_propose_a_told_architecture(pair):
    strategy, prior = warm(pair[0], 21, pair[1])
    told = {r.hash for r in prior}
    log = run_search(strategy, SHORT + 1, fail_every=4)
    assert all(len(generation) == POPULATION for generation in log), "no stall"
    proposed = hashes(log)
    assert len(set(proposed)) == len(proposed)
    assert not told & set(proposed), "a told architecture was proposed again"
    only_failures = make(pair[0], 21, pair[1])
    only_failures.tell([r for r in prior if not r.ok])
    assert len(only_failures.ask(POPULATION)) == POPULATION


def test_state_after_a_warm_tell_round_trips_and_the_restored_strategy_continues_exactly(pair):
    original, _ = warm(pair[0], 22, pair[1])
    state = original.state_dict()
    assert json_round_trip(state) == state
    restored = make(pair[0], 999, pair[1])
    restored.load_state_dict(json_round_trip(state))
    assert restored.state_dict() == state
    assert run_search(restored, SHORT - 1) == run_search(original, SHORT - 1)


@pytest.mark.parametrize("told_pair", [p for p in PAIRS if p[0] != "random"], ids=lambda p: f"{p[0]}-{p[1]}")
def test_told_results_shape_the_first_ask(told_pair):
    """Told results count as if the strategy had proposed them: they fill the population (or the model, or
    the starting points), so the first ask already breeds from, climbs from or models them.

    ``random`` is exempt: it ignores fitness by design, so told results only count as seen.
    """
    name, space = told_pair
    strategy, prior = warm(name, 23, space)
    good = {r.hash for r in prior if r.ok}
    first = strategy.ask(POPULATION)
    fresh = make(name, 23, space).ask(POPULATION)
    assert [p.hash for p in first] != [p.hash for p in fresh], "the told results changed nothing"
    assert any(p.origin != "sample" for p in first), "the first ask is random samples only, as in a fresh search"
    assert {parent for p in first for parent in p.parents} <= good, "parents are told successes"


@pytest.mark.parametrize(("told", "random_first"), [(12, 0), (6, 4)])
def test_bo_counts_told_results_towards_its_initial_random_design(told, random_first):
    strategy = create_strategy("bo", space_of("nb201"), seed=0)
    assert strategy.initial == 10
    rng, prior = random.Random(7), {}
    while len(prior) < told:
        proposal = strategy.proposal(strategy.space.sample(rng), "sample")
        prior.setdefault(proposal.hash, result_of(proposal))
    strategy.tell(list(prior.values()))
    assert [p.origin for p in strategy.ask(6)] == ["sample"] * random_first + ["model"] * (6 - random_first)


def test_loading_another_strategys_state_raises(name):
    strategy = make(name)
    for other in sorted(set(list_strategies()) - {name}):
        with pytest.raises(ValueError):
            strategy.load_state_dict(make(other).state_dict())
    with pytest.raises(ValueError):
        strategy.load_state_dict({**strategy.state_dict(), "name": "something-else"})


def test_unknown_strategy_name_raises():
    with pytest.raises(ValueError, match=r"unknown strategy 'nope' \(known: .*random"):
        create_strategy("nope", create_space("image"), seed=0)


def test_population_reaches_population_based_strategies_only():
    for strategy in list_strategies():
        created = create_strategy(strategy, create_space("nb201"), seed=0, population=5)
        assert getattr(created, "population_size", 5) == 5
        assert hasattr(created, "population_size") == STRATEGIES[strategy].takes_population


# ---- regularized evolution ------------------------------------------------------------------


def evolution(seed: int = 0, population: int = POPULATION) -> RegularizedEvolution:
    strategy = create_strategy("evolution", create_space("image"), seed=seed, population=population)
    assert isinstance(strategy, RegularizedEvolution)
    assert strategy.population_size == population
    return strategy


def test_evolution_breeds_from_the_population_once_it_is_full():
    strategy = evolution(seed=6)
    first = strategy.ask(POPULATION)
    assert all(p.origin == "sample" and p.parents == () for p in first)
    strategy.tell([ok_result(p.genome) for p in first])
    origins = set()
    for _ in range(GENERATIONS):
        members = {m["hash"] for m in strategy.population}
        assert len(members) == POPULATION
        proposals = strategy.ask(POPULATION)
        assert len(proposals) == POPULATION
        for proposal in proposals:
            origins.add(proposal.origin)
            assert proposal.origin in ("mutation", "crossover")
            assert set(proposal.parents) <= members
            if proposal.origin == "mutation":
                assert len(proposal.parents) == 1
            else:
                assert len(proposal.parents) == 2
                assert proposal.parents[0] != proposal.parents[1]
            assert proposal.hash not in proposal.parents
        strategy.tell([ok_result(p.genome) for p in proposals])
    assert origins == {"mutation", "crossover"}


def test_evolution_population_is_the_most_recent_successes_and_never_failures():
    strategy = evolution(seed=9)
    successes: list[str] = []
    failures: set[str] = set()
    counter = 0
    for _ in range(10):
        members_before = {m["hash"] for m in strategy.population}
        full = len(strategy.population) == POPULATION
        proposals = strategy.ask(POPULATION)
        if full:
            assert all(p.origin in ("mutation", "crossover") for p in proposals)
            assert all(set(p.parents) <= members_before for p in proposals)
        results = []
        for proposal in proposals:
            counter += 1
            if counter % 3 == 0:
                results.append(failed_result(proposal.genome))
                failures.add(proposal.hash)
            else:
                results.append(ok_result(proposal.genome))
                successes.append(proposal.hash)
        strategy.tell(results)
        population = [m["hash"] for m in strategy.population]
        assert len(population) <= POPULATION
        assert not set(population) & failures
        assert population == successes[-POPULATION:]
    assert failures


def test_evolution_removes_the_oldest_member_not_the_worst():
    strategy = evolution(population=2)
    best, middle, worst = chain_genome(conv(16)), chain_genome(conv(32)), chain_genome(conv(64))
    strategy.tell([CandidateResult(best, "ok", 0.99)])
    strategy.tell([CandidateResult(middle, "ok", 0.5), CandidateResult(worst, "ok", 0.1)])
    assert [m["hash"] for m in strategy.population] == [middle.canonical_hash(), worst.canonical_hash()]
    assert [m["fitness"] for m in strategy.population] == [0.5, 0.1]


def test_evolution_ignores_failed_results_and_ok_status_without_fitness():
    strategy = evolution(population=3)
    good = chain_genome(conv(16))
    strategy.tell(
        [
            CandidateResult(chain_genome(conv(32)), "failed", None, reason="timeout: test"),
            CandidateResult(chain_genome(conv(64)), "ok", None),
            CandidateResult(good, "ok", 0.7),
        ]
    )
    assert [m["hash"] for m in strategy.population] == [good.canonical_hash()]
    # failed genomes still count as seen: they are never proposed again
    assert chain_genome(conv(32)).canonical_hash() in strategy.seen


def test_evolution_state_includes_the_population():
    strategy = evolution(seed=12)
    run_search(strategy, generations=2)
    state = json_round_trip(strategy.state_dict())
    assert [m["hash"] for m in state["population"]] == [m["hash"] for m in strategy.population]
    restored = evolution(seed=0)
    restored.load_state_dict(state)
    assert [m["hash"] for m in restored.population] == [m["hash"] for m in strategy.population]


@pytest.mark.parametrize("kwargs", [{"population_size": 0}, {"tournament_size": 0}, {"crossover_prob": 1.5}])
def test_evolution_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        RegularizedEvolution(create_space("image"), seed=0, **kwargs)


# ---- a prior: a score per identity known before any evaluation (e.g. a zero-cost proxy table) ----------

# nb201 is listed (6,466 architectures): its pairs are slow, one quick nb201 check per strategy stays below
PRIOR_PAIRS = [pytest.param(s, c, marks=pytest.mark.slow) if c == "nb201" else (s, c) for s, c in PAIRS]
PRIOR_IDS = [f"{strategy}-{space}" for strategy, space in PAIRS]


@functools.cache
def prior_for(case: str) -> dict[str, float]:
    """Scores of every architecture of a listable space; of a few sampled ones where the space cannot be listed."""
    space = space_of(case)
    listed = space.enumerate()
    genomes = listed if listed else [space.sample(random.Random(i)) for i in range(20)]
    return {space.identity(g): score(space.identity(g)[::-1]) for g in genomes}


def with_prior(name: str, seed: int, space: str):
    strategy = make(name, seed, space)
    strategy.use_prior(prior_for(space))
    return strategy


@pytest.mark.parametrize(("strategy", "space"), PRIOR_PAIRS, ids=PRIOR_IDS)
def test_with_a_prior_asks_go_on_deterministically_and_never_repeat(strategy, space):
    log = run_search(with_prior(strategy, 31, space), SHORT, fail_every=5)
    assert all(len(generation) == POPULATION for generation in log), "no stall"
    proposed = hashes(log)
    assert len(set(proposed)) == len(proposed)
    assert run_search(with_prior(strategy, 31, space), SHORT, fail_every=5) == log


@pytest.mark.slow  # lists 6,466 nb201 architectures per strategy
def test_a_prior_on_a_listable_space_gives_the_first_ask_from_the_best_scored(name):
    strategy = with_prior(name, 32, "nb201")
    best = sorted(strategy.prior, key=lambda h: -strategy.prior[h])[: strategy.prior_pool]
    first = strategy.ask(POPULATION)
    assert all(p.origin == "prior" and p.hash in best for p in first)
    assert [p.hash for p in first] != [p.hash for p in make(name, 32, "nb201").ask(POPULATION)]


def test_scores_without_genomes_on_a_space_that_cannot_be_listed_leave_the_random_phase_unchanged(name):
    plain, primed = make(name, 33, "image"), with_prior(name, 33, "image")
    assert [p.hash for p in primed.ask(POPULATION)] == [p.hash for p in plain.ask(POPULATION)]


def test_a_scored_pool_on_a_space_that_cannot_be_listed_gives_the_first_ask_from_its_best(name):
    space = space_of("image")
    pool = {space.identity(g): g for g in (space.sample(random.Random(i)) for i in range(3 * PRIOR_POOL))}
    scores = {identity: score(identity[::-1]) for identity in pool}
    strategy = make(name, 35, "image")
    strategy.use_prior(scores, pool)
    best = sorted(scores, key=lambda h: -scores[h])[:PRIOR_POOL]
    first = strategy.ask(POPULATION)
    assert all(p.origin == "prior" and p.hash in best for p in first)
    assert all(space.identity(p.genome) == p.hash for p in first)


@pytest.mark.parametrize(("strategy", "space"), PRIOR_PAIRS, ids=PRIOR_IDS)
def test_state_with_a_prior_round_trips_and_the_prior_is_given_again_on_resume(strategy, space):
    original = with_prior(strategy, 34, space)
    run_search(original, 2, fail_every=5)
    state = original.state_dict()
    assert json_round_trip(state) == state
    assert not any("prior" in key for key in state), "the prior is given again on resume, not stored"
    restored = make(strategy, 999, space)
    restored.load_state_dict(json_round_trip(state))
    restored.use_prior(prior_for(space))  # after loading (the search gives it before: both work)
    assert restored.state_dict() == state
    assert run_search(restored, SHORT - 1) == run_search(original, SHORT - 1)
