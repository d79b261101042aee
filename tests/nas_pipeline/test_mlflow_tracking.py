"""MLflow tracking against a real SQLite store: experiment, nested runs, params, tags, metrics, artifacts, retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

from nas_pipeline.mlflow_tracking import (
    DEFAULT_DB_NAME,
    TAG_PREFIX,
    MlflowTracker,
    TrackingUnavailable,
    _retry,
    resolve_tracking_uri,
    ui_command,
)
from tests.conftest import Flaky


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite tracking store and a tracker whose experiment keeps its artifacts under ``artifacts/``."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    tracker = MlflowTracker(uri, "nas-tests", root / "artifacts")
    return tracker, MlflowClient(uri), root


@pytest.fixture(scope="module")
def runs(store):
    """A parent search run with one finished and one failed candidate run."""
    tracker, _, _ = store
    parent = tracker.start_run("search", {"budget": 3, "strategy": "evolution"}, {"kind": "search"})
    child = tracker.start_run(
        "candidate-0",
        {"lr": 0.005, "node.n0.op": "conv", "long": "x" * 7000},
        {"kind": "candidate", "hash": "abc"},
        parent_run_id=parent,
    )
    failed = tracker.start_run("candidate-1", {}, {"kind": "candidate"}, parent_run_id=parent)
    for step, (acc, loss) in enumerate([(0.5, 1.5), (0.7, 0.9), (0.9, 0.4)], start=1):
        tracker.log_metrics(child, {"val_accuracy": acc, "train_loss": loss}, step=step)
    tracker.set_tags(child, {"status": "ok"})
    tracker.log_json(child, {"nodes": ["input", "output"], "score": 0.9}, "genome/genome.json")
    tracker.end_run(child, ok=True)
    tracker.end_run(failed, ok=False)
    tracker.end_run(parent, ok=True)
    return parent, child, failed


# ---- experiment ------------------------------------------------------------------------------


def test_experiment_is_created_with_artifacts_under_the_given_folder(store):
    tracker, client, root = store
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "nas-tests"
    assert experiment.artifact_location == (root / "artifacts").resolve().as_uri()


def test_existing_experiment_is_reused(store):
    tracker, _, root = store
    again = MlflowTracker(tracker.tracking_uri, "nas-tests", root / "elsewhere")
    assert again.experiment_id == tracker.experiment_id


def test_run_artifacts_live_under_the_artifact_folder(store, runs):
    _, client, root = store
    _, child, _ = runs
    assert client.get_run(child).info.artifact_uri.startswith((root / "artifacts").resolve().as_uri() + "/")


# ---- runs ------------------------------------------------------------------------------------


def test_parent_run_has_no_parent_and_its_params_and_tags(store, runs):
    _, client, _ = store
    parent, _, _ = runs
    run = client.get_run(parent)
    assert run.info.run_name == "search"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.params == {"budget": "3", "strategy": "evolution"}
    assert run.data.tags[f"{TAG_PREFIX}kind"] == "search"


def test_child_run_is_nested_with_params_and_prefixed_tags(store, runs):
    tracker, client, _ = store
    parent, child, _ = runs
    run = client.get_run(child)
    assert run.info.experiment_id == tracker.experiment_id
    assert run.info.run_name == "candidate-0"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["nas.kind"] == "candidate"
    assert run.data.tags["nas.hash"] == "abc"
    assert run.data.tags["nas.status"] == "ok"  # set_tags prefixes too
    assert "kind" not in run.data.tags and "hash" not in run.data.tags
    assert run.data.params["lr"] == "0.005"
    assert run.data.params["node.n0.op"] == "conv"
    assert run.data.params["long"] == "x" * 6000  # long values are truncated to MLflow's limit


def test_children_can_be_found_by_parent(store, runs):
    tracker, client, _ = store
    parent, child, failed = runs
    found = client.search_runs([tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_id for r in found} == {child, failed}


def test_metric_history_keeps_every_step(store, runs):
    _, client, _ = store
    _, child, _ = runs
    history = sorted(client.get_metric_history(child, "val_accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.7), (3, 0.9)]
    losses = sorted(client.get_metric_history(child, "train_loss"), key=lambda m: m.step)
    assert [m.value for m in losses] == [1.5, 0.9, 0.4]
    assert client.get_run(child).data.metrics["val_accuracy"] == 0.9


def test_log_json_writes_a_downloadable_artifact(store, runs, tmp_path):
    _, client, _ = store
    _, child, _ = runs
    local = client.download_artifacts(child, "genome/genome.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"nodes": ["input", "output"], "score": 0.9}


def test_log_artifact_uploads_a_file(store, runs, tmp_path):
    tracker, client, _ = store
    _, child, _ = runs
    source = tmp_path / "model.onnx"
    source.write_bytes(b"\x00\x01 onnx bytes")
    tracker.log_artifact(child, source, "model")
    assert [a.path for a in client.list_artifacts(child, "model")] == ["model/model.onnx"]
    local = client.download_artifacts(child, "model/model.onnx", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == b"\x00\x01 onnx bytes"


def test_a_closing_writes_the_epochs_final_metrics_and_tags_in_batches_of_mlflows_limits(store, monkeypatch):
    tracker, client, _ = store
    run_id = tracker.start_run("long-training", {}, {"kind": "candidate"})
    keys = ("train_loss", "val_loss", "val_accuracy", "val_f1")
    steps = [(epoch, {key: epoch / 1000 for key in keys}) for epoch in range(1, 301)]  # 1,200 values
    calls = []
    log_batch = tracker.client.log_batch
    monkeypatch.setattr(
        tracker.client, "log_batch", lambda *a, **k: (calls.append((len(k["metrics"]), len(k["tags"]))), log_batch(*a, **k))[1]
    )
    tracker.close_run(run_id, True, metrics={"test_accuracy": 0.9}, tags={"early_stopped": 300, "status": "ok"}, step=300,
                      history=steps)  # fmt: skip
    assert calls == [(998, 2), (203, 0)], "at most 1,000 metrics and tags a call, the tags with the first"
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(e, e / 1000) for e in range(1, 301)]
    closed = client.get_run(run_id)
    assert closed.data.metrics["test_accuracy"] == 0.9 and closed.info.status == "FINISHED"
    assert closed.data.tags["nas.early_stopped"] == "300" and closed.data.tags["nas.status"] == "ok"
    tagged_only = tracker.start_run("killed", {}, {"kind": "candidate"})
    tracker.close_run(tagged_only, False, tags={"status": "killed"}, status="KILLED")
    assert calls[-1] == (0, 1) and client.get_run(tagged_only).info.status == "KILLED"


def _drawn_curves(monkeypatch) -> list:
    """The learning curves every evaluation's figures are drawn from, from now on (drawn here, not in the figure
    process, which tests/nas_pipeline/test_figure_process.py covers)."""
    from nas_pipeline import figure_process, plots

    drawn = []

    def draw(function, genome, curves, *rest):
        assert function is plots.evaluation_pngs
        drawn.append(curves)
        return function(genome, curves, *rest)

    monkeypatch.setattr(figure_process, "draw", draw)
    return drawn


def test_evaluation_plots_are_drawn_from_the_logged_epochs(store, monkeypatch):
    from nas_core.genome import Genome

    tracker, client, _ = store
    run_id = tracker.start_run("candidate-plots", {}, {"kind": "candidate"})
    tracker.close_run(run_id, True, history=[(1, {"train_loss": 1.5, "val_accuracy": 0.5}), (2, {"train_loss": 0.9})])
    drawn = _drawn_curves(monkeypatch)
    genome = Genome.read(Path(__file__).resolve().parents[2] / "docs" / "examples" / "genome.json")
    tracker.log_evaluation_plots(run_id, genome, "candidate-plots", 2)
    assert drawn == [[{"epoch": 1.0, "train_loss": 1.5, "val_accuracy": 0.5}, {"epoch": 2.0, "train_loss": 0.9}]]
    listed = sorted(a.path for a in client.list_artifacts(run_id, "plots"))
    assert listed == ["plots/architecture.png", "plots/learning_curves.png"]
    assert f"{TAG_PREFIX}plot_error" not in client.get_run(run_id).data.tags


def test_evaluation_plots_draw_the_epochs_given_without_reading_the_store(store, monkeypatch):
    from nas_core.genome import Genome

    tracker, client, _ = store
    run_id = tracker.start_run("candidate-held", {}, {"kind": "candidate"})
    drawn, reads = _drawn_curves(monkeypatch), _counted(monkeypatch, tracker.client, "get_metric_history")
    genome = Genome.read(Path(__file__).resolve().parents[2] / "docs" / "examples" / "genome.json")
    tracker.log_evaluation_plots(
        run_id, genome, "candidate-held", 2, history=((1, {"val_accuracy": 0.5}), (2, {"val_accuracy": 0.7}))
    )
    assert drawn == [[{"epoch": 1.0, "val_accuracy": 0.5}, {"epoch": 2.0, "val_accuracy": 0.7}]] and reads == []
    assert sorted(a.path for a in client.list_artifacts(run_id, "plots")) == [
        "plots/architecture.png",
        "plots/learning_curves.png",
    ]


def _counted(monkeypatch, owner, method: str) -> list:
    """Every call of ``owner.<method>`` from now on, as its keyword arguments (the call still happens)."""
    calls, real = [], getattr(owner, method)
    monkeypatch.setattr(owner, method, lambda *a, **k: (calls.append(k), real(*a, **k))[1])
    return calls


def test_close_run_writes_the_last_metrics_and_tags_in_one_batch_then_the_status(store, monkeypatch):
    tracker, client, _ = store
    run_id = tracker.start_run("closed", {}, {"kind": "candidate"})
    batches = _counted(monkeypatch, tracker.client, "log_batch")
    tracker.close_run(run_id, True, metrics={"test_accuracy": 0.9, "params": 120}, tags={"status": "ok"}, step=3)
    assert [(len(b["metrics"]), len(b["tags"])) for b in batches] == [(2, 1)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[f"{TAG_PREFIX}status"] == "ok"
    assert run.data.metrics == {"test_accuracy": 0.9, "params": 120.0}
    assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == [3]


def test_close_run_with_tags_only_and_an_explicit_status(store):
    tracker, client, _ = store
    run_id = tracker.start_run("killed", {}, {"kind": "candidate"})
    tracker.close_run(run_id, False, tags={"status": "killed"}, status="KILLED")
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[f"{TAG_PREFIX}status"] == "killed" and run.data.metrics == {}


def test_log_json_of_a_run_it_created_does_not_read_the_run_back(store, monkeypatch, tmp_path):
    tracker, client, _ = store
    run_id = tracker.start_run("candidate-json", {}, {"kind": "candidate"})
    reads = _counted(monkeypatch, SqlAlchemyStore, "get_run")  # what MLflow's log_text would call to find the artifacts
    tracker.log_json(run_id, {"nodes": ["input", "output"]}, "genome.json")
    tracker.log_json(run_id, {"nested": True}, "genome/more.json")
    assert reads == []
    assert json.loads(Path(client.download_artifacts(run_id, "genome.json", str(tmp_path))).read_text()) == {
        "nodes": ["input", "output"]
    }
    assert [a.path for a in client.list_artifacts(run_id, "genome")] == ["genome/more.json"]


def test_log_json_of_another_trackers_run_finds_its_artifacts(store, tmp_path):
    tracker, client, _ = store
    run_id = tracker.start_run("made-elsewhere", {}, {"kind": "candidate"})
    other = MlflowTracker.attach(tracker.tracking_uri, tracker.experiment_id)  # a worker process's tracker, say
    other.log_json(run_id, {"score": 1}, "genome.json")
    assert json.loads(Path(client.download_artifacts(run_id, "genome.json", str(tmp_path))).read_text()) == {"score": 1}


def test_end_run_sets_finished_or_failed(store, runs):
    _, client, _ = store
    parent, child, failed = runs
    assert client.get_run(child).info.status == "FINISHED"
    assert client.get_run(failed).info.status == "FAILED"
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(failed).info.end_time is not None


# ---- tracking URI ----------------------------------------------------------------------------


def test_resolve_tracking_uri_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_resolve_tracking_uri_defaults_to_the_project_database(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{(tmp_path / DEFAULT_DB_NAME).resolve()}"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(Path(".")) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"  # absolute, not relative


def test_ui_command():
    assert ui_command("http://host:5000") == "open http://host:5000 in a browser"
    assert ui_command("sqlite:////x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db"


# ---- retries ---------------------------------------------------------------------------------


def test_retry_retries_a_locked_database_then_succeeds(sleeps):
    call = Flaky(MlflowException("database is locked"), MlflowException("(sqlite3.OperationalError) database is locked"))
    assert _retry(call) == "done"
    assert call.calls == 3
    assert sleeps == [pytest.approx(0.2), pytest.approx(0.4)]  # exponential back-off


def test_retry_reraises_a_non_transient_error_at_once(sleeps):
    call = Flaky(MlflowException("RESOURCE_DOES_NOT_EXIST: run 'x' not found"))
    with pytest.raises(MlflowException, match="not found"):
        _retry(call)
    assert call.calls == 1
    assert sleeps == []


def test_retry_gives_up_when_its_patience_is_used_up(sleeps):
    call = Flaky(*[MlflowException("database is locked") for _ in range(10)])
    with pytest.raises(TrackingUnavailable, match="locked"):
        _retry(call, patience=0.5)
    assert call.calls == 3
    assert sleeps == [pytest.approx(0.2), pytest.approx(0.3)], "the last wait is cut to the patience left"


def test_retry_does_not_catch_other_exceptions(sleeps):
    call = Flaky(OSError("database is locked"))
    with pytest.raises(OSError):
        _retry(call)
    assert call.calls == 1
