"""SearchRun, the library side of the flow, driven directly (no Prefect): failures, hyperparameters, summary."""

import json

import pytest
from mlflow.tracking import MlflowClient

from nas_core.config import SearchConfig
from tests.conftest import search_directly


def _run(project, **settings):
    return search_directly(project, **{"epochs": 1, "population": 2, "budget": 2, **settings})


@pytest.mark.slow
def test_genome_hyperparameters_drive_training_and_are_logged(project):
    run = _run(project, hparams={"batch_size": [16, 32], "lr": [0.002]})
    client = MlflowClient(run.tracker.tracking_uri)
    for record in run.records:
        params = client.get_run(record.mlflow_run_id).data.params
        assert record.genome.hparams["batch_size"] in (16, 32)
        assert params["train.batch_size"] == str(record.genome.hparams["batch_size"])
        assert params["hparam.batch_size"] == str(record.genome.hparams["batch_size"])
        assert params["train.lr"] == "0.002"


@pytest.mark.slow
def test_candidates_that_fail_are_recorded_and_an_all_failed_search_says_so(project):
    run = _run(project, candidate_timeout=1e-6)
    assert [r.status for r in run.records] == ["failed", "failed"]
    assert all(r.reason.startswith("timeout") for r in run.records)
    assert run.best() is None and not run.can_export()
    summary = run.finished.to_dict()
    client = MlflowClient(run.tracker.tracking_uri)
    assert summary["best"] is None
    assert client.get_run(run.run_id).info.status == "FAILED"
    for record in run.records:
        remote = client.get_run(record.mlflow_run_id)
        assert remote.info.status == "FAILED"
        assert remote.data.tags["nas.failure_reason"].startswith("timeout")
    on_disk = json.loads((project / "out" / "summary.json").read_text())
    assert on_disk["candidates"][0]["reason"].startswith("timeout")


@pytest.mark.slow
def test_best_is_chosen_by_validation_never_by_test(project):
    run = _run(project)
    a, b = run.records
    a.metrics.update(val_accuracy=0.9, test_accuracy=0.1, params=10)
    b.metrics.update(val_accuracy=0.8, test_accuracy=1.0, params=10)
    assert run.best() is a
    b.metrics.update(val_accuracy=0.9, val_f1=a.metrics["val_f1"], params=5)
    assert run.best() is b, "ties on validation go to the smaller model"


@pytest.mark.slow
def test_max_params_is_a_constraint_on_proposals(project):
    run = _run(project, max_params=3_000)
    assert all(r.metrics.get("params", 0) <= 3_000 for r in run.records)
    assert all(run.cost(r.genome)["params"] <= 3_000 for r in run.records)


@pytest.mark.parametrize("space", ["image", "nb201"])
def test_space_options_only_reach_spaces_that_take_them(space):
    from nas_core.search.setup import space_options

    options = space_options(SearchConfig(space=space, min_nodes=3, max_nodes=4))
    assert options == ({"min_nodes": 3, "max_nodes": 4} if space == "image" else {})


@pytest.mark.slow
def test_a_zero_cost_proxy_screens_proposals_and_is_logged_on_every_run(project):
    run = _run(project, budget=4, population=4, proxy="naswot", proxy_keep=0.5)
    trained = [r.proxy for r in run.records]
    screened = [s["proxy"] for s in run.proposer.screened]
    assert len(trained) == 4 and len(screened) == 4, "8 proposals scored, the best half trained"
    assert min(trained) >= max(screened)
    client = MlflowClient(run.tracker.tracking_uri)
    for record in run.records:
        assert client.get_run(record.mlflow_run_id).data.metrics["proxy_naswot"] == record.proxy
    summary = run.finished.to_dict()
    assert summary["proxy"]["name"] == "naswot" and summary["proxy"]["screened_out"] == 4
    assert summary["proxy"]["pairs"] == sum(r.ok for r in run.records)
    rho = summary["proxy"]["rank_correlation"]
    assert rho is None or -1.0 <= rho <= 1.0


@pytest.mark.slow
def test_median_early_stopping_judges_later_generations_by_earlier_curves(project):
    run = _run(project, budget=6, population=3, epochs=4, early_stop="median")
    first = [r for r in run.records if r.generation == 1]
    later = sorted((r for r in run.records if r.generation == 2), key=lambda r: r.index)
    assert len(first) == 3 and len(later) == 3
    assert all(len(r.curve) == 4 and "stopped_at_epoch" not in r.metrics for r in first), "nothing to compare with yet"
    thresholds = run.proposer.stop_below(run.records, 2)
    assert thresholds[0] is None, "the first quarter of the epochs is never judged"
    for epoch in (2, 3, 4):
        assert thresholds[epoch - 1] == sorted(r.curve[epoch - 1] for r in first)[1]
    client = MlflowClient(run.tracker.tracking_uri)
    for record in later:
        below = [e for e in (2, 3) if max(record.curve[:e]) < thresholds[e - 1]]
        expected_stop = below[0] if below else None
        assert record.metrics.get("stopped_at_epoch") == expected_stop, record.curve
        assert len(record.curve) == (expected_stop or 4)
        tags = client.get_run(record.mlflow_run_id).data.tags
        assert tags.get("nas.early_stopped") == (str(expected_stop) if expected_stop else None)
