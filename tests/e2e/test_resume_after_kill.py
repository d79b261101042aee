"""A search killed with SIGKILL in the middle of training resumes to the end: real nas search processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO_ROOT, make_project
from tests.flows.test_resume import TERMINAL


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
