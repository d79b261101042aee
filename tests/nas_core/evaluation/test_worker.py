"""One candidate's job: failures come back as outcomes, infrastructure errors are raised (and retried by the flow)."""

import dataclasses
import re
import threading

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import flows.search
import nas_core.evaluation.worker
from flows.cli import EXIT_FAILED, main
from flows.search import nas_search
from nas_core.config import SearchConfig
from nas_core.data.store import LocalDataStore
from nas_core.evaluation.devices import shared_leases
from nas_core.evaluation.worker import EPOCH_METRICS, evaluate
from nas_core.search.loop import PLOTTED_CANDIDATES, Search
from nas_core.search.ports import InfrastructureError, MemoryTracker
from nas_pipeline import dvc_versioning as versioning
from nas_pipeline.dvc_versioning import DvcDataStore
from nas_pipeline.pipeline import build_search
from tests.conftest import make_project, shared_prefect_harness
from tests.nas_core.search.test_table_search import write_table


@pytest.fixture
def core_run(tmp_path):
    """A search of the library alone (data in a folder, runs in memory): quick, and no tool involved."""
    config = SearchConfig(project_dir=tmp_path, output=tmp_path / "out", budget=2, population=2, epochs=1, workers=1)
    run = Search(config, LocalDataStore(tmp_path / "data"), search_id="jobs")
    run.prepare()
    return run


@pytest.fixture
def digits_run(project):
    run = build_search(SearchConfig(project_dir=project, output=project / "out", budget=2, population=2, epochs=1), "jobs")
    run.prepare()
    return run


def test_a_candidate_that_raises_is_a_failed_outcome_and_frees_its_device(core_run, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(nas_core.evaluation.worker, "train_genome", out_of_memory)
    job = core_run.propose()[0]
    outcome = evaluate(job)
    assert outcome.status == "failed" and outcome.weights is None
    assert outcome.reason == "error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert all(count == 0 for count in shared_leases(("cpu",), None).holders().values())
    record = core_run.record(outcome)
    run = core_run.tracker.runs[record.mlflow_run_id]
    assert run.status == "FAILED" and run.tags["failure_reason"] == outcome.reason and run.parent_run_id == core_run.run_id


def test_a_diverging_candidate_fails_with_the_reason(core_run):
    job = core_run.propose()[0]
    job = type(job)(**{**job.__dict__, "train": type(job.train)(**{**job.train.__dict__, "lr": 1e30, "optimizer": "sgd"})})
    outcome = evaluate(job)
    assert outcome.status == "failed" and outcome.reason.startswith("diverged")


class LockedStoreTracker(MemoryTracker):
    """A tracker whose store says "locked" is a transient error (as MLflow's adapter does)."""

    def is_transient(self, exc: BaseException) -> bool:
        return "database is locked" in str(exc)


@pytest.mark.parametrize(
    "error", [RuntimeError("(sqlite3.OperationalError) database is locked"), InfrastructureError("data store unreachable")]
)
def test_infrastructure_errors_are_raised_not_blamed_on_the_candidate(core_run, monkeypatch, error):
    def store_down(*args, **kwargs):
        raise error

    monkeypatch.setattr(nas_core.evaluation.worker, "train_genome", store_down)
    job = dataclasses.replace(core_run.propose()[0], tracker=LockedStoreTracker())
    with pytest.raises(type(error), match=str(error)[-12:]):
        evaluate(job)


class RecordingTracker(MemoryTracker):
    """Remembers how metrics and tags reach the store and which runs get figures."""

    def __init__(self) -> None:
        super().__init__()
        self.single_steps: list[set[str]] = []  # the metric names of each log_metrics call
        self.closings: list[tuple[list[int], dict]] = []  # the epochs and tags of each close_run call
        self.opened: list[dict] = []  # the tags each run was created with
        self.tagged: list[set[str]] = []  # the tag names of each set_tags call after a run's creation
        self.plotted: list[str] = []
        self.plotted_history: list[tuple] = []

    def start_run(self, name, params, tags, parent_run_id=None):
        self.opened.append(dict(tags))
        run_id = super().start_run(name, params, {}, parent_run_id)
        MemoryTracker.set_tags(self, run_id, tags)
        return run_id

    def set_tags(self, run_id, tags):
        self.tagged.append(set(tags))
        super().set_tags(run_id, tags)

    def log_metrics(self, run_id, metrics, step=0):
        self.single_steps.append(set(metrics))
        super().log_metrics(run_id, metrics, step)

    def close_run(self, run_id, ok, metrics=None, tags=None, step=0, status=None, history=()):
        self.closings.append(([epoch for epoch, _ in history], dict(tags or {})))
        super().close_run(run_id, ok, metrics, tags, step, status, history)

    def log_evaluation_plots(self, run_id, genome, title, dims, history=()):
        self.plotted.append(run_id)
        self.plotted_history.append(tuple(history))


@pytest.fixture
def recorded_run(tmp_path):
    tracker = RecordingTracker()
    config = SearchConfig(project_dir=tmp_path, output=tmp_path / "out", budget=2, population=2, epochs=3, workers=1)
    run = Search(config, LocalDataStore(tmp_path / "data"), search_id="jobs", connect_tracker=lambda: tracker)
    run.prepare()
    return run, tracker


def test_a_candidates_epochs_reach_the_store_when_its_run_is_closed_and_it_draws_nothing(recorded_run):
    run, tracker = recorded_run
    outcome = evaluate(run.propose()[0])
    assert outcome.ok and [epoch for epoch, _ in outcome.epochs] == [1, 2, 3]
    assert "val_accuracy" not in tracker.runs[outcome.run_id].metrics, "the worker logs no epoch: the closing does"
    run.record(outcome)
    assert [epochs for epochs, _ in tracker.closings] == [[1, 2, 3]], "the epochs go with the closing's write"
    assert not any(names & set(EPOCH_METRICS) for names in tracker.single_steps), "no epoch logged on its own"
    logged = tracker.runs[outcome.run_id]
    assert logged.metrics["val_accuracy"] == [(epoch, metrics["val_accuracy"]) for epoch, metrics in outcome.epochs]
    assert logged.status == "FINISHED"
    assert tracker.plotted == [], "figures are drawn at the end of the search, not per candidate"


def test_the_run_opens_while_the_candidate_trains(recorded_run, monkeypatch):
    run, tracker = recorded_run
    training, open_during_training = threading.Event(), []
    train, start_run = nas_core.evaluation.worker.train_genome, tracker.start_run

    def train_noting_it(*args, **kwargs):
        training.set()
        return train(*args, **kwargs)

    def start_run_once_training(*args, **kwargs):  # a store that answers only once the candidate trains
        open_during_training.append(training.wait(timeout=60))
        return start_run(*args, **kwargs)

    monkeypatch.setattr(nas_core.evaluation.worker, "train_genome", train_noting_it)
    monkeypatch.setattr(tracker, "start_run", start_run_once_training)
    job = run.propose()[0]
    outcome = evaluate(job)
    assert open_during_training == [True], "the candidate waited for its run before training"
    assert outcome.ok and outcome.run_id in tracker.runs
    logged = tracker.runs[outcome.run_id]
    assert logged.artifacts["genome.json"] == job.planned.genome.to_dict() and logged.params == {
        k: str(v) for k, v in job.run_params.items()
    }


@pytest.mark.parametrize("transient", [False, True])
def test_a_run_the_store_cannot_create_is_raised_not_blamed_on_the_candidate(recorded_run, monkeypatch, transient):
    run, tracker = recorded_run
    error = RuntimeError("(sqlite3.OperationalError) database is locked" if transient else "experiment 7 was deleted")

    def store_refuses(*args, **kwargs):
        raise error

    monkeypatch.setattr(tracker, "start_run", store_refuses)
    monkeypatch.setattr(tracker, "is_transient", lambda exc: "database is locked" in str(exc))
    with pytest.raises(RuntimeError, match=re.escape(str(error))):
        evaluate(run.propose()[0])
    assert all(count == 0 for count in shared_leases(("cpu",), None).holders().values())


def test_an_early_stop_is_tagged_when_the_run_is_closed_not_in_a_write_of_its_own(recorded_run):
    run, tracker = recorded_run
    job = run.propose()[0]
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, stop_below=(1.01,)))  # no accuracy passes
    outcome = evaluate(job)
    assert outcome.ok and [epoch for epoch, _ in outcome.epochs] == [1]
    assert not any("early_stopped" in names for names in tracker.tagged), "the worker writes no tag of its own for it"
    run.record(outcome)
    assert [(epochs, tags.get("early_stopped")) for epochs, tags in tracker.closings] == [([1], "1")]
    assert tracker.runs[outcome.run_id].tags["early_stopped"] == "1"


def test_a_candidates_run_is_created_with_its_device(recorded_run):
    run, tracker = recorded_run
    outcome = evaluate(run.propose()[0])
    assert outcome.ok and outcome.device == "cpu"
    assert tracker.opened[-1]["device"] == "cpu" and tracker.opened[-1]["status"] == "running"
    assert not any("device" in names for names in tracker.tagged), "no write of its own for the device"
    assert tracker.runs[outcome.run_id].tags["device"] == "cpu"


def test_a_worker_without_the_devices_asked_for_fails_the_candidate_in_its_run(recorded_run):
    run, tracker = recorded_run
    job = dataclasses.replace(run.propose()[0], devices=f"cuda:{torch.cuda.device_count()}")  # one past the last
    outcome = evaluate(job)
    assert outcome.status == "failed" and outcome.reason.startswith("error: DeviceError: CUDA device")
    assert outcome.device == "" and "device" not in tracker.opened[-1]
    assert tracker.runs[outcome.run_id].artifacts["genome.json"] == job.planned.genome.to_dict()
    assert all(count == 0 for count in shared_leases(("cpu",), None).holders().values())


def test_the_search_draws_the_figures_of_its_best_few_trained_candidates(recorded_run):
    run, tracker = recorded_run
    real = run.record(evaluate(run.propose()[0]))
    ranked = [
        dataclasses.replace(
            real, index=i, hash=f"{i:064x}", mlflow_run_id=f"run-{i}", metrics={**real.metrics, "val_accuracy": i / 10}
        )
        for i in range(1, 9)
    ]
    failed = dataclasses.replace(real, index=9, hash="f" * 64, mlflow_run_id="failed", status="failed")
    reused = dataclasses.replace(ranked[0], index=10, mlflow_run_id="reused", reused_from="run-x", metrics={"val_accuracy": 0.99})
    run.records = [*ranked, failed, reused]
    run.plot_best()
    assert tracker.plotted == [f"run-{i}" for i in range(8, 0, -1)][:PLOTTED_CANDIDATES]  # not failed, not reused
    assert real.epochs and tracker.plotted_history == [real.epochs] * PLOTTED_CANDIDATES, "curves from the epochs held"


@pytest.mark.slow
def test_a_worker_refuses_data_of_another_version(digits_run, monkeypatch):
    job = digits_run.propose()[0]
    monkeypatch.setattr(nas_core.evaluation.worker, "_DATA", {})  # a fresh worker process: nothing cached
    stale = type(job)(**{**job.__dict__, "dataset_version": "0" * 32 + ".dir"})
    with pytest.raises(versioning.DataIntegrityError, match="dvc checkout"):
        evaluate(stale)
    outcome = evaluate(job)  # the real version loads and trains
    assert outcome.ok and outcome.weights is not None


def _table_config(project, table, **settings):
    return {"project_dir": str(project), "output": str(project / "out"), "space": "nb201", "evaluator": f"table:{table}",
            "select_metric": "val", "report_metric": "test", "budget": 6, "population": 3, "workers": 2, **settings}  # fmt: skip


@pytest.mark.slow
def test_the_flow_retries_a_transient_error_and_never_a_candidate_failure(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    table = write_table(tmp_path / "table.json")
    calls: list[int] = []

    def flaky(job):
        calls.append(job.index)
        if job.index == 2 and calls.count(2) == 1:
            raise MlflowException("RESOURCE_EXHAUSTED: server temporarily unavailable, try again")
        if job.index == 3:  # a deterministic failure of this candidate: its table cannot be read
            job = dataclasses.replace(job, table=(str(tmp_path / "missing.json"), "val", "test"))
        return evaluate(job)

    monkeypatch.setattr(flows.search, "evaluate", flaky)
    with shared_prefect_harness():
        summary = nas_search(_table_config(make_project(tmp_path / "p"), table), search_id="retry", show_progress=False)
    assert sorted(calls) == [1, 2, 2, 3, 4, 5, 6], "the transient error was retried once; the failure was not"
    statuses = {c["index"]: c["status"] for c in summary["candidates"]}
    assert statuses[2] == "ok" and statuses[3] == "failed"
    assert summary["candidates"][2]["reason"].startswith("error: TableError: cannot read table")


@pytest.mark.slow
def test_a_search_where_every_candidate_fails_exits_non_zero_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project(tmp_path / "p")
    with shared_prefect_harness():
        code = main(["search", "--project-dir", str(project), "--output", str(project / "out"), "--budget", "2",
                     "--population", "2", "--epochs", "1", "--candidate-timeout", "0.000001", "--quiet"])  # fmt: skip
    assert code == EXIT_FAILED
    captured = capsys.readouterr()
    assert "every candidate failed" in captured.err
    assert "2 trained, 0 ok, 2 failed" in captured.out


@pytest.mark.slow
def test_corrupted_data_stops_the_search_before_any_candidate(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project(tmp_path / "p")
    DvcDataStore(project).prepare("digits")
    target = project / "data" / "digits" / "train_x.npy"
    corrupted = np.load(target)
    corrupted[0, 0, 0, 0] += 0.5
    np.save(target, corrupted)
    before = target.read_bytes()
    with shared_prefect_harness():
        code = main(["search", "--project-dir", str(project), "--output", str(project / "out"), "--budget", "2", "--quiet"])
    assert code == EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: data/ does not match data.dvc (modified: data/digits/train_x.npy)")
    assert "dvc checkout" in err[-1]
    assert target.read_bytes() == before, "the evidence is left as it was"
    assert not (project / "mlflow.db").exists() or not MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_experiments()]
    ), "no candidate was started"
