"""The chained-search benchmark on a synthetic NB201 table: structure, distinct queries, warm-start memory."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from benchmarks import chained_search as bench
from benchmarks.strategies import Simulation
from nas_core.spaces.nb201 import EDGES, NB201_OPS, format_arch
from nas_core.strategies import create_strategy

SCORE = {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 1.5, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0}
LINKS, QUERIES, BATCH, POPULATION = 3, 4, 2, 2


def select_value(cell) -> float:
    return 50.0 + sum((i + 1) * SCORE[op] for i, op in enumerate(cell))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Every NB201 cell; select column ``sel`` (best: all 3x3 convolutions), report column ``rep`` = sel / 2."""
    rows = {
        format_arch(cell): {"sel": select_value(cell), "rep": select_value(cell) / 2}
        for cell in itertools.product(NB201_OPS, repeat=len(EDGES))
    }
    path = tmp_path_factory.mktemp("bench") / "table.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def simulation(table):
    return Simulation(str(table), "sel", "rep")


def test_link_seeds_differ_and_the_first_is_the_chains_own():
    assert bench.link_seed(7, 1) == 7
    seeds = {bench.link_seed(s, k) for s in range(2) for k in range(1, LINKS + 1)}
    assert len(seeds) == 2 * LINKS


@pytest.mark.parametrize("name", ["evolution", "bo"])
def test_a_chain_queries_distinct_architectures_and_each_link_is_warm_started(simulation, name, monkeypatch):
    told_before_first_ask: list[set[str]] = []  # per link: the identities its strategy was told before its first ask
    original = bench.create_strategy

    def recording(*args, **kwargs):
        strategy = original(*args, **kwargs)
        tell, ask, told = strategy.tell, strategy.ask, set()

        def record_tell(results):
            told.update(r.hash for r in results)
            tell(results)

        def record_ask(n):
            if strategy.ask is record_ask:  # the first ask: stop recording
                told_before_first_ask.append(set(told))
                strategy.ask = ask
            return ask(n)

        strategy.tell, strategy.ask = record_tell, record_ask
        return strategy

    monkeypatch.setattr(bench, "create_strategy", recording)
    for seed in (0, 1):
        told_before_first_ask.clear()
        trace = bench.run_chain(simulation, name, seed, LINKS, QUERIES, BATCH, POPULATION)
        identities = [identity for identity, _, _ in trace]
        assert len(identities) == LINKS * QUERIES
        assert len(set(identities)) == len(identities) and bench.repeats(trace) == 0
        # link k (from 0) was told exactly the queries of the links before it, and queried none of them again
        assert told_before_first_ask == [set(identities[: k * QUERIES]) for k in range(LINKS)]


def test_the_chains_first_link_is_the_short_search(simulation):
    chain = bench.run_chain(simulation, "evolution", 3, LINKS, QUERIES, BATCH, POPULATION)
    assert chain[:QUERIES] == bench.run_chain(simulation, "evolution", 3, 1, QUERIES, BATCH, POPULATION)


def test_one_search_matches_a_plain_ask_tell_loop(simulation):
    strategy = create_strategy("evolution", simulation.space, seed=5, population=POPULATION)
    expected = []
    while len(expected) < LINKS * QUERIES:
        proposals = strategy.ask(BATCH)
        expected += [p.hash for p in proposals]
        strategy.tell([bench.evaluate(simulation, p)[0] for p in proposals])
    trace = bench.run_chain(simulation, "evolution", 5, 1, LINKS * QUERIES, BATCH, POPULATION)
    assert [identity for identity, _, _ in trace] == expected


@pytest.mark.slow  # a worker process
def test_main_writes_every_variant_with_sane_figures(table, tmp_path):
    out = tmp_path / "chained.json"
    argv = [
        "--table", str(table), "--strategies", "evolution,bo", "--seeds", "2", "--links", str(LINKS),
        "--queries", str(QUERIES), "--batch", str(BATCH), "--population", str(POPULATION),
        "--select-metric", "sel", "--report-metric", "rep", "--workers", "1", "--json", str(out),
    ]  # fmt: skip
    assert bench.main(argv, progress=lambda line: None) == 0
    document = json.loads(out.read_text())
    assert {"machine", "versions", "settings", "seconds"} <= set(document)
    rows = document["results"]
    variants = ["single-12", "chain-3x4", "single-4"]
    assert [(r["strategy"], r["variant"]) for r in rows] == [(s, v) for s in ("evolution", "bo") for v in variants]
    worst, best = select_value(("none",) * 6) / 2, select_value(("nor_conv_3x3",) * 6) / 2
    for r in rows:
        assert r["seeds"] == 2 and r["repeats"] == 0
        assert r["queries"] == (4 if r["variant"] == "single-4" else 12)
        assert worst <= r["mean"] <= best
        lo, hi = r["ci95"]
        assert math.isclose(hi - r["mean"], 1.96 * r["std"] / math.sqrt(2)) and lo <= r["mean"]
        assert 0.0 <= r["found_best_frac"] <= 1.0
    for name in ("evolution", "bo"):
        long, chain, short = (next(r for r in rows if r["strategy"] == name and r["variant"] == v) for v in variants)
        # the chain's result after each link never gets worse, and after the first it is the short search's
        assert chain["after_link"][0] == pytest.approx(short["mean"])
        assert chain["after_link"] == sorted(chain["after_link"]) and chain["after_link"][-1] == pytest.approx(chain["mean"])
        assert chain["within_single_ci95"] == (long["ci95"][0] <= chain["mean"] <= long["ci95"][1])
        assert "after_link" not in long and "within_single_ci95" not in long


def test_bad_arguments_exit_with_2_or_an_error(table):
    assert bench.main(["--table", str(table), "--strategies", "nope"], progress=lambda line: None) == 2
    with pytest.raises(SystemExit):
        bench.main(["--table", str(table), "--links", "0"])
