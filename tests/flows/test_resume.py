"""Checkpoints and resume: a search that dies continues under the same MLflow run, nothing trained twice or lost.

The library-level tests use a tabular benchmark (deterministic, no training) so the resumed search can be
compared proposal by proposal with one that never stopped; the SIGKILL test kills a real training search.
"""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import nas_core.search.loop
from flows.cli import EXIT_USAGE, main
from nas_core.config import SearchConfig
from nas_core.evaluation.worker import evaluate
from nas_core.search.closing import KILLED_REASON
from nas_core.search.loop import Search
from nas_pipeline.pipeline import build_search
from tests.conftest import make_project
from tests.nas_core.search.test_table_search import write_table

TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def _config(project: Path, table: Path, **settings) -> SearchConfig:
    values = {"project_dir": project, "output": project / "out", "space": "nb201", "strategy": "evolution",
              "evaluator": f"table:{table}", "select_metric": "val", "report_metric": "test", "budget": 14,
              "population": 4, "seed": 5, **settings}  # fmt: skip
    return SearchConfig(**values)


def _drive(run: Search, stop_after: int | None = None, orphan: bool = False) -> Search:
    """Run the search loop in process; stop ("crash") after ``stop_after`` records, optionally with a run left open.

    When ``stop_after`` is the end of a generation, the crash comes before that generation's ``select``.
    """
    while jobs := run.propose():
        for job in jobs:
            if stop_after is not None and len(run.records) == stop_after:
                if orphan:
                    evaluate(job)  # trained, but the process "dies" before recording it: RUNNING in MLflow
                return run
            run.record(evaluate(job))
        if stop_after is not None and len(run.records) == stop_after:
            return run
        run.select()
    run.finish(None)
    return run


def _runs(run: Search) -> list:
    client = MlflowClient(run.tracker.tracking_uri)
    return client.search_runs([run.tracker.experiment_id], f"tags.`nas.search_id` = '{run.search_id}'")


@pytest.fixture
def table(tmp_path):
    return write_table(tmp_path / "toy_table.json")


@pytest.mark.parametrize(
    ("strategy", "stop_after", "orphan"),
    [("evolution", 6, True), ("bo", 6, True), ("evolution", 8, False)],
    ids=["evolution-mid-generation", "bo-mid-generation", "evolution-before-select"],
)
@pytest.mark.slow
def test_a_resumed_search_proposes_exactly_what_an_uninterrupted_one_does(
    tmp_path, table, monkeypatch, strategy, stop_after, orphan
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    whole_project, broken_project = make_project(tmp_path / "whole"), make_project(tmp_path / "broken")
    whole = build_search(_config(whole_project, table, strategy=strategy), search_id="whole")
    whole.prepare()
    _drive(whole)

    first = build_search(_config(broken_project, table, strategy=strategy), search_id="broken")
    first.prepare()
    _drive(first, stop_after=stop_after, orphan=orphan)  # generations of 4: 6 is mid-way, 8 the end of the second
    resumed = build_search(_config(broken_project, table, strategy=strategy), search_id="broken", resume=True)
    resumed.prepare()
    assert resumed.run_id == first.run_id, "the same MLflow parent run continues"
    assert len(resumed.records) == stop_after and resumed.killed_on_resume == int(orphan)
    _drive(resumed)

    def order(run):
        return [(r.index, r.hash) for r in sorted(run.records, key=lambda r: r.index)]

    assert order(resumed) == order(whole)
    summary = json.loads((broken_project / "out" / "summary.json").read_text())
    assert set(summary) == set(json.loads((whole_project / "out" / "summary.json").read_text()))
    assert len(summary["candidates"]) == 14

    runs = _runs(resumed)
    assert all(r.info.status in TERMINAL for r in runs), "no run is left RUNNING"
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == int(orphan) and all(r.data.tags["nas.failure_reason"] == KILLED_REASON for r in killed)
    candidates = [r for r in runs if r.data.tags.get("nas.role") == "candidate"]
    finished = [r.data.tags["nas.hash"] + "@" + r.data.tags["nas.fidelity"] for r in candidates if r.info.status != "KILLED"]
    assert len(finished) == len(set(finished)) == 14, "each identity (hash, fidelity) finished exactly once"
    parent = MlflowClient(resumed.tracker.tracking_uri).get_run(resumed.run_id)
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_results_arriving_in_any_order_lead_to_the_same_proposals(tmp_path, table, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    hashes = []
    for name, reverse in (("forward", False), ("reverse", True)):
        run = build_search(_config(make_project(tmp_path / name), table), search_id=name)
        run.prepare()
        while jobs := run.propose():
            for job in sorted(jobs, key=lambda j: j.index, reverse=reverse):
                run.record(evaluate(job))
            run.select()
        hashes.append([(r.index, r.hash) for r in sorted(run.records, key=lambda r: r.index)])
    assert hashes[0] == hashes[1]


@pytest.mark.slow
def test_a_run_checkpointed_but_not_closed_is_closed_with_its_outcome(tmp_path, table, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project(tmp_path / "p")
    run = build_search(_config(project, table, budget=4), search_id="late-close")
    run.prepare()
    jobs = run.propose()
    outcome = evaluate(jobs[0])
    monkeypatch.setattr(nas_core.search.loop, "close_evaluation", lambda *args: None)  # dies right after the checkpoint
    run.record(outcome)
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    resumed = build_search(_config(project, table, budget=4), search_id="late-close", resume=True)
    resumed.prepare()
    assert resumed.killed_on_resume == 0
    remote = MlflowClient(resumed.tracker.tracking_uri).get_run(outcome.run_id)
    assert remote.info.status == "FINISHED" and remote.data.tags["nas.status"] == "ok"
    _drive(resumed)
    assert len(resumed.records) == 4 and len({r.hash for r in resumed.records}) == 4


@pytest.mark.slow
def test_a_trained_candidate_checkpointed_but_not_closed_gets_its_epochs_on_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project(tmp_path / "p")
    config = SearchConfig(project_dir=project, output=project / "out", budget=2, population=2, epochs=2, workers=1)
    run = build_search(config, search_id="late-epochs")
    run.prepare()
    outcome = evaluate(run.propose()[0])
    monkeypatch.setattr(nas_core.search.loop, "close_evaluation", lambda *args: None)  # dies right after the checkpoint
    run.record(outcome)
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(run.tracker.tracking_uri)
    assert client.get_metric_history(outcome.run_id, "val_accuracy") == [], "the epochs wait for the closing"
    resumed = build_search(config, search_id="late-epochs", resume=True)
    resumed.prepare()
    assert resumed.killed_on_resume == 0
    history = sorted(client.get_metric_history(outcome.run_id, "val_accuracy"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(e, m["val_accuracy"]) for e, m in outcome.epochs] and len(history) == 2
    assert client.get_run(outcome.run_id).info.status == "FINISHED"


def test_resume_errors_are_one_line(tmp_path, table, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--resume", str(tmp_path)]) == EXIT_USAGE
    assert "no search to resume" in capsys.readouterr().err
    assert main(["search", "--resume", "no-such-id"]) == EXIT_USAGE
    assert "no search output folder or search id 'no-such-id'" in capsys.readouterr().err

    project = make_project(tmp_path / "p")
    run = build_search(_config(project, table, budget=2), search_id="done")
    run.prepare()
    _drive(run)
    out = str(project / "out")
    assert main(["search", "--resume", out, "--budget", "5"]) == EXIT_USAGE
    assert "drop --budget" in capsys.readouterr().err
    assert main(["search", "--resume", out]) == EXIT_USAGE
    assert "already finished" in capsys.readouterr().err
    assert main(["search", "--output", out, "--project-dir", str(project)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "already holds a search" in err and len(err.strip().splitlines()) == 1
