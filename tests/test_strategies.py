"""The ask/tell contract of every registered strategy, and regularized evolution's own rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nas_core.genome import Genome
from nas_core.spaces import create_space
from nas_core.strategies import STRATEGIES, CandidateResult, RegularizedEvolution, create_strategy

POPULATION = 4
GENERATIONS = 6


def fitness(genome: Genome) -> float:
    return len(genome.edges) / 10


def ok_result(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "ok", fitness(genome))


def failed_result(genome: Genome) -> CandidateResult:
    return CandidateResult(genome, "failed", None, reason="diverged: test")


def make(name: str, seed: int = 0):
    return create_strategy(name, create_space("image"), seed=seed, population=POPULATION)


def run_search(strategy, generations: int = GENERATIONS) -> list[list[tuple[str, str, tuple[str, ...]]]]:
    """ask(4), evaluate deterministically, tell; return each generation's (hash, origin, parents)."""
    log = []
    for _ in range(generations):
        proposals = strategy.ask(POPULATION)
        log.append([(p.hash, p.origin, p.parents) for p in proposals])
        strategy.tell([ok_result(p.genome) for p in proposals])
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


# ---- the contract, for every registered strategy --------------------------------------------


@pytest.fixture(params=sorted(STRATEGIES))
def name(request):
    return request.param


def test_registry_is_not_empty():
    assert {"random", "evolution"} <= set(STRATEGIES)


def test_same_seed_proposes_the_same_sequence(name):
    first, second = run_search(make(name, seed=7)), run_search(make(name, seed=7))
    assert len(hashes(first)) == POPULATION * GENERATIONS
    assert first == second


def test_other_seed_proposes_a_different_sequence(name):
    assert hashes(run_search(make(name, seed=7))) != hashes(run_search(make(name, seed=8)))


def test_no_hash_is_ever_proposed_twice(name):
    proposed = hashes(run_search(make(name, seed=3), generations=10))
    assert len(proposed) == POPULATION * 10
    assert len(set(proposed)) == len(proposed)


def test_proposals_are_valid_genomes(name):
    strategy = make(name, seed=5)
    for _ in range(3):
        proposals = strategy.ask(POPULATION)
        for proposal in proposals:
            assert proposal.genome.is_valid()
            assert proposal.hash == proposal.genome.canonical_hash()
        strategy.tell([ok_result(p.genome) for p in proposals])


def test_state_dict_is_json_serialisable(name):
    strategy = make(name, seed=1)
    run_search(strategy, generations=3)
    state = strategy.state_dict()
    assert json_round_trip(state) == state
    assert state["name"] == name


def test_restored_strategy_continues_exactly_like_the_original(name):
    original = make(name, seed=11)
    run_search(original, generations=3)
    state = json_round_trip(original.state_dict())
    restored = make(name, seed=999)  # a different seed: everything must come from the state
    restored.load_state_dict(state)
    assert run_search(restored) == run_search(original)


def test_restored_state_keeps_seen_hashes_and_queue(name):
    original = make(name, seed=2)
    proposed = hashes(run_search(original, generations=2))
    queued = chain_genome(conv(16), conv(16))
    original.enqueue(queued)
    restored = make(name, seed=2)
    restored.load_state_dict(json_round_trip(original.state_dict()))
    following = restored.ask(POPULATION)
    assert following[0].hash == queued.canonical_hash()
    assert following[0].origin == "enqueued"
    assert not {p.hash for p in following} & set(proposed)


def test_loading_another_strategys_state_raises(name):
    strategy = make(name)
    for other in sorted(set(STRATEGIES) - {name}):
        with pytest.raises(ValueError):
            strategy.load_state_dict(make(other).state_dict())
    with pytest.raises(ValueError):
        strategy.load_state_dict({**strategy.state_dict(), "name": "something-else"})


def test_enqueued_genome_is_the_first_proposal(name):
    strategy = make(name, seed=4)
    run_search(strategy, generations=2)  # evolution's population is full by now
    genome = chain_genome(conv(64, kernel=5), conv(16, stride=2), ("identity", {}))
    strategy.enqueue(genome)
    proposals = strategy.ask(POPULATION)
    assert proposals[0].hash == genome.canonical_hash()
    assert proposals[0].origin == "enqueued"
    assert proposals[0].genome.to_dict() == genome.to_dict()
    assert len(proposals) == POPULATION
    assert genome.canonical_hash() not in {p.hash for p in proposals[1:]}


def test_an_already_seen_enqueued_genome_is_not_proposed_again(name):
    strategy = make(name, seed=4)
    first = strategy.ask(1)[0]
    strategy.tell([ok_result(first.genome)])
    strategy.enqueue(first.genome)
    assert first.hash not in {p.hash for p in strategy.ask(POPULATION)}


def test_sequence_does_not_depend_on_the_process_hash_seed(name):
    """A resumed search runs in a new process: proposals must not depend on set/str-hash order."""
    script = (
        "import json\n"
        "from tests.test_strategies import make, run_search\n"
        f"print(json.dumps(run_search(make({name!r}, seed=21), generations=4)))\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=_root(), check=True)
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 4


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_strategy_name_raises():
    with pytest.raises(ValueError, match="nope"):
        create_strategy("nope", create_space("image"), seed=0)


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
