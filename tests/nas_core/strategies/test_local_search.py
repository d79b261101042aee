"""Best-improvement local search: exact neighbourhoods, climbing, restarts at local optima."""

from __future__ import annotations

import json
import random

from nas_core.genome import Genome
from nas_core.spaces import create_space
from nas_core.strategies import STRATEGIES, CandidateResult, LocalSearch, create_strategy

# A small image space whose neighbours can all be listed: conv/identity cells of 2-3 nodes.
SPACE = create_space("image", min_nodes=2, max_nodes=3, ops=("conv", "identity"), kernels=(3,), channels=(16, 32))


def fitness(genome: Genome) -> float:
    """A deterministic stand-in for validation accuracy, equal for genomes of one identity (unlike the
    encoding, which depends on how the nodes happen to be numbered): a number drawn from the identity."""
    return int(SPACE.identity(genome)[:12], 16) / 16**12


def ok(genome: Genome, value: float | None = None) -> CandidateResult:
    return CandidateResult(genome, "ok", fitness(genome) if value is None else value)


def failed(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "failed", None, reason="diverged: test")


def local(seed: int = 0, space=SPACE, **kwargs) -> LocalSearch:
    return LocalSearch(space, seed=seed, **kwargs)


def ids(genomes) -> list[str]:
    return [SPACE.identity(g) for g in genomes]


def started(seed: int = 0, value: float = 0.5) -> tuple[LocalSearch, Genome]:
    """A local search whose current point is its first (random) proposal, evaluated at ``value``."""
    strategy = local(seed)
    start = strategy.ask(1)[0]
    assert start.origin == "sample"
    strategy.tell([ok(start.genome, value)])
    assert strategy.current is not None and strategy.current["hash"] == start.hash
    return strategy, start.genome


def test_registered():
    strategy = create_strategy("local", SPACE, seed=0, population=4)
    assert "local" in STRATEGIES and isinstance(strategy, LocalSearch)


def test_proposes_exactly_the_unseen_neighbours_of_the_current_point_in_a_seeded_order():
    strategy, start = started(seed=1)
    expected = ids(SPACE.neighbours(start))
    proposals = strategy.ask(len(expected))
    assert sorted(p.hash for p in proposals) == sorted(expected)
    assert all(p.origin == "local" and p.parents == (SPACE.identity(start),) for p in proposals)
    assert [p.hash for p in proposals] != expected  # shuffled, not the space's order
    # nothing is left to explore around the current point: more asks are random samples
    assert [p.origin for p in strategy.ask(3)] == ["sample"] * 3
    # ...and the current point is not decided while its neighbours are out for evaluation
    assert strategy.current["hash"] == SPACE.identity(start) and strategy.optima == []


def test_neighbour_order_depends_on_the_seed_only():
    orders = []
    for seed in (2, 2, 3):
        strategy = local(seed)
        strategy.enqueue(SPACE.sample(random.Random(99)))  # the same start for every seed
        first = strategy.ask(1)[0]
        strategy.tell([ok(first.genome, 0.5)])
        orders.append([p.hash for p in strategy.ask(30) if p.origin == "local"])
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == sorted(orders[2]) and orders[0] != orders[2]


def test_already_seen_neighbours_are_not_proposed_again():
    strategy = local(seed=4)
    start = SPACE.sample(random.Random(5))
    neighbours = SPACE.neighbours(start)
    # evaluated elsewhere (e.g. told by a warm start): every one a starting point, the best (start) first
    strategy.tell([ok(n, -1.0) for n in neighbours[:3]] + [ok(start, 0.5)])
    assert strategy.current["hash"] == SPACE.identity(start)
    proposals = strategy.ask(len(neighbours))
    local_ones = [p.hash for p in proposals if p.origin == "local"]
    assert sorted(local_ones) == sorted(ids(neighbours[3:]))


def test_moves_to_the_best_neighbour_once_all_neighbours_have_results():
    strategy, start = started(seed=6, value=0.5)
    neighbours = strategy.ask(len(SPACE.neighbours(start)))
    assert {p.origin for p in neighbours} == {"local"}
    best = neighbours[len(neighbours) // 2]
    for p in neighbours:  # one at a time, the best in the middle: the search waits for every neighbour
        assert strategy.current["hash"] == SPACE.identity(start)
        strategy.tell([ok(p.genome, 0.9 if p is best else 0.1 + 0.01 * neighbours.index(p))])
    assert strategy.current["hash"] == best.hash
    following = strategy.ask(len(SPACE.neighbours(best.genome)))
    assert following and all(p.origin == "local" and p.parents == (best.hash,) for p in following[:1])
    seen_before = {SPACE.identity(start)} | {p.hash for p in neighbours}
    unseen = sorted(h for h in ids(SPACE.neighbours(best.genome)) if h not in seen_before)
    assert sorted(p.hash for p in following if p.origin == "local") == unseen


def test_a_tie_with_the_current_point_is_not_a_move_and_failures_are_ignored():
    strategy, start = started(seed=7, value=0.5)
    neighbours = strategy.ask(len(SPACE.neighbours(start)))
    strategy.tell([failed(neighbours[0].genome)] + [ok(p.genome, 0.5) for p in neighbours[1:]])
    assert strategy.current is None  # nothing strictly better: a local optimum
    assert strategy.optima == [{"hash": SPACE.identity(start), "fitness": 0.5}]


def test_restarts_from_a_fresh_random_genome_at_a_local_optimum():
    strategy, start = started(seed=8, value=0.9)
    proposals = strategy.ask(len(SPACE.neighbours(start)) + 4)
    fillers = [p for p in proposals if p.origin == "sample"]
    assert len(fillers) == 4  # asked for more than the neighbourhood: random genomes fill up
    strategy.tell([ok(p.genome, 0.1) for p in proposals if p.origin == "local"])
    assert strategy.optima == [{"hash": SPACE.identity(start), "fitness": 0.9}]
    assert strategy.current is None  # the random genomes are still out
    assert [p.origin for p in strategy.ask(2)] == ["sample", "sample"]
    strategy.tell([ok(p.genome, 0.2 + 0.01 * i) for i, p in enumerate(fillers)])
    assert strategy.current["hash"] == fillers[-1].hash  # the restart begins at the best random genome
    following = strategy.ask(1)[0]
    assert following.origin == "local" and following.parents == (fillers[-1].hash,)
    assert strategy.best["hash"] == SPACE.identity(start)  # the best seen is kept across restarts


def test_a_failed_random_genome_is_never_a_starting_point():
    strategy = local(seed=9)
    first = strategy.ask(2)
    strategy.tell([failed(first[0].genome)])
    assert strategy.current is None
    strategy.tell([ok(first[1].genome, 0.3)])
    assert strategy.current["hash"] == first[1].hash


def test_neighbours_seen_already_decide_at_once_moving_on():
    strategy, start = started(seed=10, value=0.5)
    neighbours = SPACE.neighbours(start)
    best = neighbours[len(neighbours) // 2]
    # every neighbour's result arrives from elsewhere before any was asked for
    strategy.tell([ok(n, 0.9 if n is best else 0.1) for n in neighbours])
    proposal = strategy.ask(1)[0]
    assert strategy.current["hash"] == SPACE.identity(best)
    assert proposal.origin == "local" and proposal.parents == (SPACE.identity(best),)


def test_neighbours_seen_already_decide_at_once_restarting():
    strategy, start = started(seed=11, value=0.5)
    neighbours = SPACE.neighbours(start)
    strategy.tell([ok(n, 0.1 + 0.01 * (i == 2)) for i, n in enumerate(neighbours)])
    proposal = strategy.ask(1)[0]
    assert strategy.optima == [{"hash": SPACE.identity(start), "fitness": 0.5}]
    # told without being asked for, the neighbours are starting points too: the restart begins at the best
    assert strategy.current["hash"] == SPACE.identity(neighbours[2])
    assert proposal.origin == "local" and proposal.parents == (SPACE.identity(neighbours[2]),)


def test_told_results_it_did_not_propose_are_starting_points_best_first():
    strategy = local(seed=13)
    rng = random.Random(14)
    told = [SPACE.sample(rng) for _ in range(5)]
    values = [0.2, 0.7, 0.4, 0.9, 0.1]
    strategy.tell([failed(told[0])] + [ok(g, v) for g, v in zip(told[1:], values[1:], strict=True)])
    best = SPACE.identity(told[3])
    assert strategy.current["hash"] == best
    assert sorted(s["hash"] for s in strategy.starts) == sorted(ids([told[1], told[2], told[4]]))
    proposal = strategy.ask(1)[0]
    assert proposal.origin == "local" and proposal.parents == (best,)


def test_neighbours_outside_the_constraint_are_skipped():
    rng = random.Random(12)
    start = next(g for g in iter(lambda: SPACE.sample(rng), None) if len(g.nodes) == 4)  # two op nodes
    allowed = set(ids(SPACE.neighbours(start))[:2]) | {SPACE.identity(start)}
    # neighbours never add a node: of those, only the two allowed pass; random genomes need three op nodes
    strategy = local(seed=12, constraint=lambda g: SPACE.identity(g) in allowed or len(g.nodes) == 5)
    strategy.enqueue(start)
    strategy.tell([ok(strategy.ask(1)[0].genome, 0.5)])
    proposals = strategy.ask(10)
    assert sorted(p.hash for p in proposals if p.origin == "local") == sorted(allowed - {SPACE.identity(start)})
    assert all(len(p.genome.nodes) == 5 for p in proposals if p.origin == "sample")


def test_every_move_improves_and_every_local_optimum_beats_all_its_neighbours():
    strategy = local(seed=13)
    settled: list[tuple[str, int]] = []  # (new current point, local optima so far)
    settle = strategy._settle

    def spy(member):
        settled.append((member["hash"], len(strategy.optima)))
        settle(member)

    strategy._settle = spy
    genomes: dict[str, Genome] = {}
    origins: dict[str, str] = {}
    while len(genomes) < 400:
        proposals = strategy.ask(4)
        genomes.update({p.hash: p.genome for p in proposals})
        origins.update({p.hash: p.origin for p in proposals})
        strategy.tell([ok(p.genome) for p in proposals])
    assert len(strategy.optima) >= 3
    moves = restarts = 0
    for (before, optima_before), (after, optima_after) in zip(settled, settled[1:], strict=False):
        if optima_after == optima_before:  # a move: to an improving neighbour
            moves += 1
            assert after in ids(SPACE.neighbours(genomes[before]))
            assert fitness(genomes[after]) > fitness(genomes[before])
        else:  # a restart: from a random genome
            restarts += 1
            assert origins[after] == "sample"
    assert moves >= 3 and restarts >= 3
    for optimum in strategy.optima:
        value = fitness(genomes[optimum["hash"]])
        assert optimum["fitness"] == value
        assert all(fitness(n) <= value for n in SPACE.neighbours(genomes[optimum["hash"]]))
    assert strategy.best["fitness"] == max(fitness(g) for g in genomes.values())


def test_restored_mid_neighbourhood_continues_exactly_like_the_original():
    original, _ = started(seed=14)
    out = original.ask(5)
    original.tell([ok(out[0].genome), failed(out[1].genome)])
    restored = local(seed=0)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))

    def rest(strategy):
        strategy.tell([ok(p.genome) for p in out[2:]])
        log = []
        for _ in range(15):
            proposals = strategy.ask(3)
            log.append([(p.hash, p.origin, p.parents) for p in proposals])
            strategy.tell([ok(p.genome) for p in proposals])
        return log, strategy.optima, strategy.current

    assert rest(restored) == rest(original)
