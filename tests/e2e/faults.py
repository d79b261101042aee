"""Helpers of the fault-injection tests: a real `nas search` process, waits on its files and runs, MLflow checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import REPO_ROOT
from tests.flows.test_resume import TERMINAL

NAS = [sys.executable, "-m", "flows.cli", "search"]


def nas_env(tmp_path: Path, tracking_uri: str | None = None) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("NAS_DEBUG", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def start_search(args: list[str], project: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``nas search ARGS`` in its own process group, stdout and stderr to ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(NAS + args, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the search ended (code {proc.returncode}) before {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def seconds_to_exit(proc: subprocess.Popen, client: MlflowClient, fault: Callable[[], None], timeout: float) -> float:
    """Once two candidates train, apply ``fault`` (a signal, a server stopped); the seconds until ``proc`` exits."""
    try:
        wait_for(lambda: len(candidate_runs(client, "nas-digits", "RUNNING")) == 2, 300, "two candidates training", proc)
        fault()
        started = time.monotonic()
        proc.wait(timeout=timeout)
        return time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()


def candidate_runs(client: MlflowClient, experiment: str, status: str | None = None) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = "tags.`nas.role` = 'candidate'" + (f" and attributes.status = '{status}'" if status else "")
    return client.search_runs([found.experiment_id], query)


def check_search_completed(client: MlflowClient, out: Path, budget: int) -> dict:
    """The summary has the whole budget, no architecture twice, no run left RUNNING; MLflow agrees on what completed."""
    summary = json.loads((out / "summary.json").read_text())
    assert [c["index"] for c in summary["candidates"]] == list(range(1, budget + 1)), "none lost"
    identities = sorted((c["hash"], str(c["fidelity"])) for c in summary["candidates"])
    assert len(set(identities)) == budget, "no identity finished twice"
    experiment = client.get_experiment_by_name(summary["mlflow_experiment"]).experiment_id
    runs = client.search_runs([experiment], f"tags.`nas.search_id` = '{summary['search_id']}'")
    assert all(r.info.status in TERMINAL for r in runs), [r.info.status for r in runs]
    candidates = [r for r in runs if r.data.tags.get("nas.role") == "candidate"]
    completed = sorted((r.data.tags["nas.hash"], r.data.tags["nas.fidelity"]) for r in candidates if r.info.status != "KILLED")
    assert completed == identities, "MLflow agrees: each identity was evaluated to the end once"
    return summary
