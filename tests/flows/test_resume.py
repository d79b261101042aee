"""Checkpoints and resume: a search that dies continues under the same MLflow run, nothing trained twice or lost.

The library-level tests use a tabular benchmark (deterministic, no training) so the resumed search can be
compared proposal by proposal with one that never stopped; the SIGKILL test kills a real training search.
"""

import json
import os
import signal
import subprocess
import sys
import time
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
from tests.conftest import REPO_ROOT, make_project
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


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the search ended (code {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _finished_count(state: Path) -> int:
    try:
        return len(json.loads(state.read_text())["finished"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_sigkill_in_the_middle_of_training_then_resume(tmp_path):
    """A real search is killed (SIGKILL, its whole process group) while candidates train, then resumed."""
    project = make_project(tmp_path / "project")
    out = project / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    nas = [sys.executable, "-m", "flows.cli", "search"]
    budget = 6
    args = ["--budget", str(budget), "--epochs", "6", "--population", "3", "--workers", "2", "--seed", "1",
            "--output", str(out), "--project-dir", str(project), "--quiet"]  # fmt: skip
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(nas + args, cwd=project, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _finished_count(out / "state.json") >= 1, 300, "a first candidate finished", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    before = json.loads((out / "state.json").read_text())
    done_before = len(before["finished"])
    assert 1 <= done_before < budget, "killed in the middle of the search"

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nas-digits").experiment_id
    running = client.search_runs([experiment], "attributes.status = 'RUNNING' and tags.`nas.role` = 'candidate'")
    assert running, "candidates were training when the process died"

    resumed = subprocess.run(nas + ["--resume", str(out), "--project-dir", str(project)], cwd=project, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed:" in resumed.stderr

    summary = json.loads((out / "summary.json").read_text())
    search_id = json.loads((out / "search.json").read_text())["search_id"]
    assert summary["search_id"] == search_id and len(summary["candidates"]) == budget
    assert [c["index"] for c in summary["candidates"]] == list(range(1, budget + 1)), "none lost"
    identities = [(c["hash"], c["fidelity"]) for c in summary["candidates"]]
    assert len(set(identities)) == budget, "no identity finished twice"
    assert summary["best"] is not None and Path(summary["best"]["onnx_path"]).is_file()

    runs = client.search_runs([experiment], f"tags.`nas.search_id` = '{search_id}'")
    assert all(r.info.status in TERMINAL for r in runs), [r.info.status for r in runs]
    parents = [r for r in runs if r.data.tags.get("nas.role") == "search"]
    assert len(parents) == 1 and parents[0].info.run_id == summary["mlflow_run_id"]
    candidates = [r for r in runs if r.data.tags.get("nas.role") == "candidate"]
    killed = [r for r in candidates if r.info.status == "KILLED"]
    # a run RUNNING at the kill was either checkpointed (then closed with its outcome on resume) or killed and re-queued
    in_summary = {c["mlflow_run_id"] for c in summary["candidates"]}
    killed_ids = {r.info.run_id for r in killed}
    assert killed_ids.isdisjoint(in_summary)
    assert {r.info.run_id for r in running} <= killed_ids | in_summary
    assert len(killed_ids) + done_before >= len(running), "every interrupted candidate is accounted for"
    completed = [(r.data.tags["nas.hash"], r.data.tags["nas.fidelity"]) for r in candidates if r.info.status != "KILLED"]
    assert sorted(completed) == sorted((h, str(f)) for h, f in identities), "MLflow agrees: each identity completed once"
    print(f"resume test: {done_before} finished before SIGKILL, {len(killed)} killed and re-queued, {budget} at the end")
