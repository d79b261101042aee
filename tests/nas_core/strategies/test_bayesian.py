"""Bayesian optimisation: determinism, resuming, constraints, the model's pieces, and that the model helps."""

from __future__ import annotations

import itertools
import json
import statistics

import numpy as np
import pytest

from nas_core.evaluation.table import TableEvaluator
from nas_core.genome import Genome
from nas_core.spaces import create_space
from nas_core.spaces.nb201 import EDGES, NB201_OPS, format_arch, genome_to_cell
from nas_core.strategies import STRATEGIES, BayesianOptimization, CandidateResult, create_strategy
from nas_core.strategies.bayesian import GaussianProcess, copula, path_encoding, thompson

SCORE = {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 1.5, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0}
WEIGHT = (1.0, 0.8, 1.2, 0.6, 1.1, 0.9)  # per edge, so the edges are not interchangeable


def synthetic(cell) -> float:
    """A known function of the ops, best (uniquely) when every edge is a 3x3 convolution."""
    return 40.0 + sum(w * SCORE[op] for w, op in zip(WEIGHT, cell, strict=True)) + 0.5 * (cell[0] == cell[5])


@pytest.fixture(scope="module")
def nb201():
    return create_space("nb201")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A table over all 15,625 cells; the select column is ``synthetic``, the report column a shifted copy."""
    rows = {}
    for cell in itertools.product(NB201_OPS, repeat=len(EDGES)):
        value = synthetic(cell)
        rows[format_arch(cell)] = {"val_acc_200": value, "test_acc_200": value + 1.0}
    path = tmp_path_factory.mktemp("table") / "synthetic.json"
    path.write_text(json.dumps(rows))
    return TableEvaluator.load(path)


def run(strategy, space, queries: int, batch: int = 1, evaluate=None) -> list[str]:
    """ask/tell until ``queries`` evaluations; the identities in order."""
    evaluate = evaluate or (lambda genome: synthetic(genome_to_cell(genome)))
    proposed: list[str] = []
    while len(proposed) < queries:
        proposals = strategy.ask(min(batch, queries - len(proposed)))
        assert proposals
        strategy.tell([CandidateResult(p.genome, "ok", evaluate(p.genome), hash=p.hash) for p in proposals])
        proposed += [p.hash for p in proposals]
    return proposed


def bo(space, seed: int, **options) -> BayesianOptimization:
    return BayesianOptimization(space, seed=seed, **options)


def test_registered_as_bo(nb201):
    assert isinstance(create_strategy("bo", nb201, seed=0), BayesianOptimization)
    assert "bo" in STRATEGIES


def test_same_seed_same_sequence_other_seed_another(nb201):
    first = run(bo(nb201, 3, initial=4), nb201, 12, batch=3)
    assert first == run(bo(nb201, 3, initial=4), nb201, 12, batch=3)
    assert first != run(bo(nb201, 4, initial=4), nb201, 12, batch=3)
    assert len(set(first)) == len(first)


def test_resumes_identically_after_a_json_round_trip_with_pending_proposals(nb201):
    original = bo(nb201, 5, initial=4)
    run(original, nb201, 8, batch=2)
    pending = original.ask(2)  # asked, not told: they must stay in the model and stay unproposed
    state = json.loads(json.dumps(original.state_dict()))
    assert len(state["observations"]) == 8 and len(state["pending"]) == 2
    restored = bo(nb201, 123, initial=4)
    restored.load_state_dict(state)
    later = [restored.ask(2), original.ask(2)]
    assert [p.hash for p in later[0]] == [p.hash for p in later[1]]
    assert all(p.origin == "model" for p in later[0])
    assert not {p.hash for p in later[0]} & {p.hash for p in pending}
    for strategy in (original, restored):
        strategy.tell([CandidateResult(p.genome, "ok", synthetic(genome_to_cell(p.genome)), hash=p.hash) for p in pending])
    assert run(restored, nb201, 6, batch=3) == run(original, nb201, 6, batch=3)


def test_first_proposals_are_random_then_the_model_takes_over(nb201):
    strategy = bo(nb201, 1, initial=5)
    first = strategy.ask(5)
    assert [p.origin for p in first] == ["sample"] * 5
    strategy.tell([CandidateResult(p.genome, "ok", synthetic(genome_to_cell(p.genome)), hash=p.hash) for p in first])
    assert [p.origin for p in strategy.ask(3)] == ["model"] * 3


def queries_to_find(strategy, evaluator: TableEvaluator, space, best: str, cap: int) -> int:
    for n in range(1, cap + 1):
        (proposal,) = strategy.ask(1)
        if proposal.hash == best:
            return n
        value = evaluator.evaluate(space, proposal.genome)["val_accuracy"]
        strategy.tell([CandidateResult(proposal.genome, "ok", value, hash=proposal.hash)])
    return cap + 1


def test_finds_the_optimum_of_a_table_in_far_fewer_queries_than_random(nb201, table):
    best_key, best_row = table.best()
    assert genome_to_cell(nb201.from_arch_string(best_key)) == ("nor_conv_3x3",) * 6
    best = nb201.identity(nb201.from_arch_string(best_key))
    cap = 150
    model = [queries_to_find(bo(nb201, seed), table, nb201, best, cap) for seed in range(3)]
    uniform = [queries_to_find(create_strategy("random", nb201, seed=seed), table, nb201, best, cap) for seed in range(3)]
    assert max(model) <= 60, model  # 6,466 architectures: random needs ~3,000 on average
    assert statistics.mean(model) < statistics.mean(uniform), (model, uniform)


@pytest.mark.parametrize("acquisition", ["ei", "ucb", "thompson", "alternate"])
def test_every_acquisition_climbs_quickly(nb201, acquisition):
    values = sorted(synthetic(cell) for cell in itertools.product(NB201_OPS, repeat=len(EDGES)))
    top = values[int(0.995 * len(values))]  # 20 random draws reach the top 0.5 % one time in ten
    strategy = bo(nb201, 0, initial=5, acquisition=acquisition)
    run(strategy, nb201, 20, batch=4)
    assert max(o["fitness"] for o in strategy.observations) >= top


def test_thompson_draws_around_the_mean_within_the_uncertainty():
    mean, sd = np.array([0.0, 1.0, 2.0, 5.0]), np.array([0.0, 1.0, 0.0, 1e-3])
    draws = np.array([thompson(mean, sd, np.random.default_rng(seed)) for seed in range(200)])
    assert np.array_equal(draws[:, 0], np.zeros(200)) and np.array_equal(draws[:, 2], np.full(200, 2.0))
    assert np.abs(draws[:, 3] - 5.0).max() < 0.01
    assert 0.8 < draws[:, 1].std() < 1.2 and abs(draws[:, 1].mean() - 1.0) < 0.25
    assert np.array_equal(thompson(mean, sd, np.random.default_rng(7)), thompson(mean, sd, np.random.default_rng(7)))


def test_honours_the_constraint(nb201):
    def no_pooling(genome: Genome) -> bool:
        return "avg_pool_3x3" not in genome_to_cell(genome)

    strategy = BayesianOptimization(nb201, seed=2, initial=3, constraint=no_pooling)
    run(strategy, nb201, 15, batch=5)
    cells = [genome_to_cell(Genome.from_dict(o["genome"])) for o in strategy.observations]
    assert len(cells) == 15
    assert all("avg_pool_3x3" not in cell for cell in cells)


def test_failures_count_as_the_worst_result_and_are_never_proposed_again(nb201):
    strategy = bo(nb201, 4, initial=4)
    first = strategy.ask(4)
    strategy.tell(
        [CandidateResult(first[0].genome, "failed", None, reason="diverged: test", hash=first[0].hash)]
        + [CandidateResult(p.genome, "ok", synthetic(genome_to_cell(p.genome)), hash=p.hash) for p in first[1:]]
    )
    x, y = strategy._training_set()
    assert x.shape[0] == 4 and y[0] == y.min()
    later = strategy.ask(4)
    assert len(later) == 4 and first[0].hash not in {p.hash for p in later}


def test_works_on_the_image_space_without_enumeration():
    space = create_space("image")
    assert space.enumerate() is None

    def fitness(genome: Genome) -> float:  # more convolutions are better, with a little of everything else
        return sum(node.op == "conv" for node in genome.nodes) + 0.01 * len(genome.edges)

    strategy = BayesianOptimization(space, seed=0, initial=4, parents=3, mutations=5, random_candidates=10)
    proposed = run(strategy, space, 12, batch=2, evaluate=fitness)
    assert len(set(proposed)) == 12
    origins = {p.origin for p in strategy.ask(4)}
    assert origins <= {"mutation", "sample"} and "mutation" in origins
    again = BayesianOptimization(space, seed=0, initial=4, parents=3, mutations=5, random_candidates=10)
    assert run(again, space, 12, batch=2, evaluate=fitness) == proposed


def test_constraint_on_a_space_without_enumeration():
    space = create_space("image")
    strategy = BayesianOptimization(space, seed=1, initial=3, parents=1, mutations=1, random_candidates=1)
    run(strategy, space, 4, evaluate=lambda genome: float(len(genome.edges)))
    strategy.constraint = lambda genome: genome.canonical_hash()[0] in "01234567"  # about half of everything
    picked = strategy.ask(5)  # the model scores at most 3 candidates per ask: the rest are samples
    assert len(picked) == 5 and all(p.hash[0] in "01234567" for p in picked)
    strategy.constraint = lambda genome: False
    assert strategy.ask(2) == []


def test_rejects_bad_settings(nb201):
    with pytest.raises(ValueError, match="acquisition"):
        BayesianOptimization(nb201, acquisition="pi")
    with pytest.raises(ValueError, match="initial"):
        BayesianOptimization(nb201, initial=0)


def test_path_encoding_counts_op_sequences_along_live_paths():
    convs = path_encoding(("nor_conv_3x3",) * 6)
    assert convs.sum() == 4  # four input-to-output paths: 3<-0, 3<-1<-0, 3<-2<-0, 3<-2<-1<-0
    assert path_encoding(("none",) * 6).sum() == 0
    # a 'none' on edge 2<-1 cuts only the longest path; the two 2-edge paths share one op sequence
    cut = path_encoding(("nor_conv_3x3", "nor_conv_3x3", "none", "nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3"))
    assert cut.sum() == 3 and cut.max() == 2


def test_copula_keeps_the_order_and_shares_ties():
    y = copula(np.array([10.0, 90.0, 91.0, 90.0, 5.0]))
    assert y[4] < y[0] < y[1] == y[3] < y[2]
    assert y[4] == pytest.approx(-y[2])


def test_gaussian_process_interpolates_and_is_uncertain_far_away():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = np.sin(x).sum(1)
    gp = GaussianProcess().fit(x, y)
    mean, sd = gp.predict(x)
    assert np.abs(mean - y).max() < 0.1
    far_mean, far_sd = gp.predict(np.full((1, 3), 50.0))
    assert far_sd[0] > 5 * sd.max() and abs(far_mean[0]) < 1e-6
