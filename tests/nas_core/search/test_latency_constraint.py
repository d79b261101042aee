"""``max_latency_ms`` is a constraint every strategy honours, and ``objectives`` makes NSGA-II minimise latency."""

from __future__ import annotations

import random
import statistics

import pytest
from pydantic import ValidationError

from nas_core.config import ConfigError, SearchConfig
from nas_core.genome import Genome
from nas_core.latency import LATENCY_METRIC, LIMIT_MARGIN
from nas_core.search.proposing import Proposer
from nas_core.strategies import CandidateResult, list_strategies
from tests.nas_core.test_latency import FakeTimer

INPUT_SPEC = ((1, 8, 8), 10)
NETWORK_CLASS = "GenomeNet"  # what the image space builds
POPULATION, GENERATIONS = 4, 3


def proposer(tmp_path, timer=None, **settings) -> Proposer:
    config = SearchConfig(project_dir=tmp_path, population=POPULATION, **settings)
    made = Proposer(config, tmp_path / "out", latency_timer=timer)
    made.bind(INPUT_SPEC, None)
    return made


@pytest.fixture(scope="module")
def limit(tmp_path_factory) -> float:
    """The 30th percentile of random genomes' (fake) latency: a limit that rules many out."""
    free = proposer(tmp_path_factory.mktemp("free"), FakeTimer())
    rng = random.Random(0)
    latencies = [free.latency_ms(free.space.sample(rng)) for _ in range(24)]
    return statistics.quantiles(latencies, n=10)[2]


@pytest.mark.parametrize("strategy", list_strategies())
def test_every_strategy_proposes_only_architectures_under_the_latency_limit(tmp_path, limit, strategy):
    made = proposer(tmp_path, FakeTimer(), strategy=strategy, max_latency_ms=limit)
    rng = random.Random(1)
    outside = sum(made.latency_ms(made.space.sample(rng)) > limit for _ in range(20))
    assert outside >= 5, "the limit rules out a good share of random genomes"
    proposed = []
    for _ in range(GENERATIONS):
        proposals = made.strategy.ask(POPULATION)
        proposed += proposals
        made.strategy.tell(
            [
                CandidateResult(p.genome, "ok", rng.random(), metrics=made.latency_metrics(p.genome), hash=p.hash)
                for p in proposals
            ]
        )
    assert proposed, f"{strategy} proposed nothing"
    assert all(made.latency_ms(p.genome) <= limit for p in proposed)


def test_latency_is_a_candidate_metric_of_this_machine(tmp_path):
    made = proposer(tmp_path, FakeTimer())
    genome = made.space.sample(random.Random(0))
    metrics = made.latency_metrics(genome)
    assert metrics[LATENCY_METRIC] == pytest.approx(made.latency_ms(genome), abs=1e-5)
    elsewhere = {"val_accuracy": 0.9, LATENCY_METRIC: 123.0}  # an earlier search's, perhaps on another machine
    assert made.here(elsewhere, genome) == {"val_accuracy": 0.9, **metrics}
    params = made.latency_params()
    assert params["latency.source"] == "predicted" and params["latency.cpu"] == "Test CPU 9000"
    assert params["latency.batch_size"] == 1


def test_without_a_timer_there_is_no_latency_and_a_limit_is_an_error(tmp_path):
    plain = proposer(tmp_path)
    assert plain.latency_metrics(plain.space.sample(random.Random(0))) == {} and plain.latency_params() == {}
    with pytest.raises(ConfigError, match="latency needs a timer"):
        proposer(tmp_path, max_latency_ms=1.0)


def test_nsga2_minimises_the_cost_objective(tmp_path):
    assert proposer(tmp_path, FakeTimer(), strategy="nsga2").strategy.cost_metric == "params", "the default"
    made = proposer(tmp_path, FakeTimer(), strategy="nsga2", objectives="val_accuracy,latency_ms")
    assert made.strategy.cost_metric == LATENCY_METRIC
    proposals = made.strategy.ask(POPULATION)
    made.strategy.tell(
        [CandidateResult(p.genome, "ok", 0.5, metrics=made.latency_metrics(p.genome), hash=p.hash) for p in proposals]
    )
    front = made.strategy.pareto_front()
    assert front and all(m["cost"] == pytest.approx(made.latency_ms(Genome.from_dict(m["genome"])), abs=1e-5) for m in front)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"objectives": "val_accuracy,speed"}, "unknown objective 'speed'"),
        ({"objectives": "latency_ms"}, "must be val_accuracy"),
        ({"objectives": "val_accuracy,params,flops"}, "must be val_accuracy"),
        ({"objectives": "val_accuracy,latency_ms"}, "needs its limit --max-latency-ms"),
        ({"objectives": "val_accuracy,params", "strategy": "random"}, "needs its limit --max-params"),
        ({"max_latency_ms": 0}, "greater than 0"),
        ({"max_latency_ms": -1.5}, "greater than 0"),
        ({"max_latency_ms": 2, "space": "nb201"}, "not 'nb201'"),
    ],
)
def test_bad_objectives_and_limits_are_refused(settings, message):
    with pytest.raises(ValidationError, match=message):
        SearchConfig(**settings)


@pytest.mark.parametrize("strategy", ["random", "evolution", "bo"])
def test_single_objective_strategies_take_a_cost_objective_as_its_limit(strategy):
    config = SearchConfig(strategy=strategy, objectives="val_accuracy,latency_ms", max_latency_ms=0.5)
    assert config.cost_objective == LATENCY_METRIC


class WholeNetworks(FakeTimer):
    """Parts as FakeTimer times them; a whole network (the builder's) at 1 ms per 1,000 parameters."""

    def time_network_ms(self, module, input_shape, batch_size) -> float:
        assert type(module).__name__ == NETWORK_CLASS
        self.calls.append(("network", tuple(input_shape), batch_size))
        return sum(p.numel() for p in module.parameters()) / 1000


def conv_genome(channels: int) -> Genome:
    return Genome.from_dict(
        {"nodes": [{"id": "input", "op": "input"}, {"id": "output", "op": "output"},
                   {"id": "n1", "op": "conv", "settings": {"channels": channels, "kernel": 3, "stride": 1}}],
         "edges": [["input", "n1"], ["n1", "output"]]}
    )  # fmt: skip


def test_the_best_is_the_most_accurate_that_meets_the_limit_when_measured(tmp_path):
    from nas_core.data.store import LocalDataStore
    from nas_core.search.loop import Search
    from nas_core.search.records import Evaluation

    timer = WholeNetworks()
    config = SearchConfig(project_dir=tmp_path, output=tmp_path / "out", max_latency_ms=5.0)
    search = Search(config, LocalDataStore(tmp_path / "data"), search_id="t", latency_timer=timer)
    search.proposer.bind(INPUT_SPEC, None)
    big, small = conv_genome(64), conv_genome(4)  # the stem and head included: far over and well under 5 ms
    records = [Evaluation(i, 1, g, "sample", (), (), f"run-{i}", "ok", metrics={"val_accuracy": acc}, hash=f"h{i}")
               for i, (g, acc) in enumerate([(big, 0.9), (small, 0.8)])]  # fmt: skip
    search.records = records
    assert search.best() is records[1], "the more accurate one is over the limit when measured"
    assert search.proposer.measured_latency_ms(small) < 5.0 < search.proposer.measured_latency_ms(big)
    networks = [c for c in timer.calls if c[0] == "network"]
    assert len(networks) == 2
    search.best()
    assert len([c for c in timer.calls if c[0] == "network"]) == 2, "each network is measured once"
    search.records = [records[0]]
    assert search.best() is None


class Measures(FakeTimer):
    """Parts as FakeTimer times them; every whole network at ``network_ms``."""

    def __init__(self, network_ms: float) -> None:
        super().__init__()
        self.network_ms = network_ms

    def time_network_ms(self, module, input_shape, batch_size) -> float:
        return self.network_ms


@pytest.mark.parametrize(("measured", "meets"), [(0.9, True), (1 - LIMIT_MARGIN, True), (0.97, False), (1.0, False)])
def test_a_network_meets_the_limit_only_with_a_margin_for_measuring_it_again(tmp_path, measured, meets):
    made = proposer(tmp_path, Measures(measured), max_latency_ms=1.0)
    assert made.meets_latency_limit(conv_genome(4)) is meets
