"""The real flow on a tabular benchmark: no training, same Prefect/MLflow pipeline, constraints honoured."""

import itertools
import json

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import EXIT_USAGE, main
from flows.search import nas_search
from nas_core.config import SearchConfig
from nas_core.spaces import create_space
from nas_core.spaces.nb201 import EDGES, NB201_OPS, format_arch
from nas_core.strategies import STRATEGIES, CandidateResult
from nas_pipeline.pipeline import build_search
from tests.conftest import make_project, shared_prefect_harness

SCORE = {"none": 0.0, "skip_connect": 1.0, "avg_pool_3x3": 0.5, "nor_conv_1x1": 2.0, "nor_conv_3x3": 3.0}


def write_table(path):
    rows = {}
    for cell in itertools.product(NB201_OPS, repeat=len(EDGES)):
        value = sum(SCORE[op] * (i + 1) for i, op in enumerate(cell))
        rows[format_arch(cell)] = {"val": value, "test": value + 1.0, "rank": 0}
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="module")
def table_search(tmp_path_factory):
    root = tmp_path_factory.mktemp("table")
    project = make_project(root / "project")
    table = write_table(root / "toy_table.json")
    config = {"project_dir": str(project), "output": str(project / "out"), "space": "nb201", "strategy": "evolution",
              "evaluator": f"table:{table}", "select_metric": "val", "report_metric": "test", "budget": 24,
              "population": 8, "workers": 2, "seed": 3, "max_params": 600_000}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp, shared_prefect_harness():
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        summary = nas_search(config, search_id="table-search", show_progress=False)
    return project, table, summary


@pytest.mark.slow  # the module's search runs through the Prefect flow
def test_table_search_evaluates_the_budget_without_training_or_export(table_search):
    project, table, summary = table_search
    assert len(summary["candidates"]) == 24
    assert all(c["status"] == "ok" for c in summary["candidates"])
    assert summary["dataset"]["name"] == "table:toy_table.json"
    assert summary["best"]["onnx_path"] is None and not (project / "out" / "model.onnx").exists()
    assert not (project / "data").exists(), "a table search prepares no dataset"


@pytest.mark.slow  # the module's search runs through the Prefect flow
def test_selection_uses_the_select_column_and_reports_the_other(table_search):
    _, table, summary = table_search
    rows = json.loads(table.read_text())
    space = create_space("nb201")
    best = summary["best"]
    key = space.arch_string(_genome(best["genome"]))
    assert best["val_accuracy"] == rows[key]["val"] == max(c["val_accuracy"] for c in summary["candidates"])
    assert best["test_accuracy"] == rows[key]["test"]


def _genome(data):
    from nas_core.genome import Genome

    return Genome.from_dict(data)


@pytest.mark.slow  # the module's search runs through the Prefect flow
def test_every_candidate_respects_max_params_and_has_a_nested_run(table_search):
    _, _, summary = table_search
    client = MlflowClient(summary["mlflow_tracking_uri"])
    for candidate in summary["candidates"]:
        assert candidate["params"] <= 600_000
        run = client.get_run(candidate["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == summary["mlflow_run_id"]
        assert run.data.tags["nas.dataset_version"] == summary["dataset"]["version"]
        assert run.data.params["arch"].startswith("|")
    assert len({c["hash"] for c in summary["candidates"]}) == 24


def test_constraint_is_honoured_by_every_strategy(tmp_path):
    table = write_table(tmp_path / "t.json")
    for strategy in STRATEGIES:
        config = SearchConfig(space="nb201", strategy=strategy, evaluator=f"table:{table}", select_metric="val",
                              report_metric="test", max_params=400_000, population=6, seed=1)  # fmt: skip
        run = build_search(config, search_id=f"c-{strategy}")
        proposed = []
        for _ in range(4):
            batch = run.strategy.ask(6)
            proposed += batch
            results = []
            for p in batch:
                metrics = {**run.table.evaluate(run.space, p.genome), **run.cost(p.genome)}
                results.append(CandidateResult(p.genome, "ok", metrics["val_accuracy"], metrics=metrics, hash=p.hash))
            run.strategy.tell(results)
        assert proposed, strategy
        assert all(run.cost(p.genome)["params"] <= 400_000 for p in proposed), strategy


def test_table_evaluator_needs_a_table_space_and_an_existing_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = write_table(tmp_path / "t.json")
    assert main(["search", "--evaluator", f"table:{table}"]) == EXIT_USAGE
    assert "--space nb201" in capsys.readouterr().err
    assert main(["search", "--space", "nb201", "--evaluator", "table:missing.json"]) == EXIT_USAGE
    assert "cannot read table" in capsys.readouterr().err
    assert main(["search", "--space", "nb201", "--evaluator", f"table:{table}", "--select-metric", "nope"]) == EXIT_USAGE
    assert "no column 'nope'" in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == {"t.json"}
