"""The strategy benchmark script on a synthetic table: JSON structure, sane numbers, determinism."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from benchmarks import strategies as bench
from nas_core.spaces.nb201 import EDGES, NB201_OPS, format_arch

SCORE = {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 1.5, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0}
BEST = ("nor_conv_3x3",) * 6


def select_value(cell) -> float:
    return 50.0 + sum((i + 1) * SCORE[op] for i, op in enumerate(cell))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """Every NB201 cell; select column ``sel`` (best: all 3x3 convolutions), report column ``rep`` = sel / 2."""
    rows = {}
    for cell in itertools.product(NB201_OPS, repeat=len(EDGES)):
        rows[format_arch(cell)] = {"sel": select_value(cell), "rep": select_value(cell) / 2, "other": 1}
    path = tmp_path_factory.mktemp("bench") / "table.json"
    path.write_text(json.dumps(rows))
    return path


def run_main(table, out, strategies="random,bo,optuna-tpe"):
    argv = [
        "--table", str(table), "--strategies", strategies, "--seeds", "3", "--budgets", "10,40",
        "--select-metric", "sel", "--report-metric", "rep", "--population", "5", "--batch", "2", "--json", str(out),
    ]  # fmt: skip
    assert bench.main(argv, progress=lambda line: None) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_json_results_are_sane_and_deterministic(table, tmp_path):
    first = run_main(table, tmp_path / "a.json")
    assert first["table"] == str(table)
    assert {"machine", "versions", "git_commit"} <= set(first)
    assert first["machine"]["cpus"] >= 1 and first["versions"]["numpy"]
    results = first["results"]
    assert [(r["strategy"], r["budget"]) for r in results] == [(s, b) for s in ("random", "bo", "optuna-tpe") for b in (10, 40)]
    worst, best = select_value(("none",) * 6) / 2, select_value(BEST) / 2
    for r in results:
        assert set(r) == {"strategy", "budget", "seeds", "mean", "std", "ci95", "found_best_frac"}
        assert r["seeds"] == 3
        assert worst <= r["mean"] <= best and r["std"] >= 0
        lo, hi = r["ci95"]
        assert lo <= r["mean"] <= hi and math.isclose(hi - r["mean"], 1.96 * r["std"] / math.sqrt(3))
        assert 0.0 <= r["found_best_frac"] <= 1.0
        if r["found_best_frac"] == 1.0:
            assert r["mean"] == pytest.approx(best) and r["std"] == pytest.approx(0.0)
    by = {(r["strategy"], r["budget"]): r for r in results}
    for name in ("random", "bo", "optuna-tpe"):  # more queries never make the best-so-far worse
        assert by[name, 40]["mean"] >= by[name, 10]["mean"]
    # the model learns this additive table at once; random search has 3 x 40 tries at 1 in 6,466
    assert by["bo", 40]["mean"] > by["random", 40]["mean"]
    assert by["random", 40]["found_best_frac"] == 0.0
    second = run_main(table, tmp_path / "b.json")
    assert second["results"] == results


def test_outcomes_follow_the_best_by_select_not_by_report(table):
    simulation = bench.Simulation(str(table), "sel", "rep")
    best = simulation.best_identity
    trace = [("a", 60.0, 1.0), ("b", 70.0, 0.5), ("c", 65.0, 9.0), (best, 70.0, 3.0), (best, 80.0, 2.0)]
    # ties keep the first evaluated; "c" has the best report value but never the best select value
    assert simulation.outcomes(trace, [1, 2, 4, 5, 6]) == [(1.0, False), (0.5, False), (0.5, False), (2.0, True), None]


def test_summarise_computes_mean_std_and_interval():
    row = bench.summarise("s", 10, [(1.0, True), (3.0, False)])
    assert row["mean"] == 2.0 and row["std"] == pytest.approx(math.sqrt(2))
    assert row["ci95"] == pytest.approx([2.0 - 1.96, 2.0 + 1.96])
    assert row["found_best_frac"] == 0.5
    empty = bench.summarise("s", 10_000, [])  # every search ran out of architectures first
    assert empty["seeds"] == 0 and empty["mean"] is None and empty["ci95"] is None


def test_missing_optuna_is_one_line_and_exit_2(table, monkeypatch, capsys):
    monkeypatch.setattr(bench, "_version", lambda package: None if package == "optuna" else "1")
    assert bench.main(["--table", str(table), "--strategies", "random,optuna-tpe", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == bench.MISSING_OPTUNA and "\n" not in err


def test_unknown_strategy_and_bad_table_exit_2(table, tmp_path, capsys):
    assert bench.main(["--table", str(table), "--strategies", "random,nope", "--seeds", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    missing = tmp_path / "missing.json"
    assert bench.main(["--table", str(missing), "--strategies", "random", "--seeds", "1"]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert bench.main(["--table", str(table), "--strategies", "random", "--select-metric", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def cached_prior(folder, score):
    """A stand-in synflow table of nb201, written where the benchmark looks, so that nothing is computed."""
    from nas_core.evaluation.proxy_table import ProxyTable, ProxyTableKey
    from nas_core.spaces import create_space

    space = create_space("nb201")
    key = ProxyTableKey.of(space, *bench.TABLE_INPUT, "synflow")
    scores = {space.identity(g): score(space.arch_string(g)) for g in space.enumerate()}
    return ProxyTable(key, scores).write(folder / key.file_name())


@pytest.mark.slow  # a 6,466-architecture correlation and two worker processes
def test_a_strategy_with_a_proxy_prior_uses_the_cached_table_and_reports_its_correlation(table, tmp_path):
    cells = {format_arch(cell): select_value(cell) for cell in itertools.product(NB201_OPS, repeat=len(EDGES))}
    path = cached_prior(tmp_path / "proxies", lambda arch: cells[arch])  # a perfect prior
    argv = ["--table", str(table), "--strategies", "random,random+synflow", "--seeds", "3", "--budgets", "5",
            "--select-metric", "sel", "--report-metric", "rep", "--proxy-dir", str(tmp_path / "proxies"),
            "--json", str(tmp_path / "out.json")]  # fmt: skip
    assert bench.main(argv, progress=lambda line: None) == 0
    document = json.loads((tmp_path / "out.json").read_text())
    prior = document["proxies"]["synflow"]
    assert prior["file"] == str(path) and prior["spearman_sel"] == pytest.approx(1.0) and prior["architectures"] == 6466
    by = {r["strategy"]: r for r in document["results"]}
    assert by["random+synflow"]["mean"] > by["random"]["mean"]  # drawn from the 20 best of a perfect prior


def test_a_strategy_with_an_unknown_proxy_exits_2(table, capsys):
    assert bench.main(["--table", str(table), "--strategies", "bo+nope", "--seeds", "1"]) == 2
    assert "bo+nope" in capsys.readouterr().err
