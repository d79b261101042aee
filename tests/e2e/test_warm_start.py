"""Searches that remember, as users run them: the same `nas search` twice with reuse, a warm start, a time budget, and
a warm start that names a search of another space (real processes, the project's MLflow store)."""

from __future__ import annotations

import json
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_project
from tests.e2e.faults import NAS, candidate_runs, nas_env
from tests.nas_core.search.test_table_search import write_table

SMALL = ["--budget", "4", "--population", "2", "--epochs", "2", "--quiet"]


def _search(project, env, *args, timeout=600):
    return subprocess.run(NAS + list(args), cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project where one small search ran, then the same command again with ``--warm-start reuse``."""
    root = tmp_path_factory.mktemp("remember")
    project, env = make_project(root / "project"), nas_env(root)
    first = _search(project, env, *SMALL, "--output", "first")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    again = _search(project, env, *SMALL, "--output", "again", "--warm-start", "reuse")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    return project, env


def test_the_same_command_again_retrains_nothing_the_first_trained(store):
    project, _ = store
    first, again = _summary(project / "first"), _summary(project / "again")
    trained_first = {c["hash"] for c in first["candidates"]}
    reused = [c for c in again["candidates"] if c["reused_from"]]
    trained = [c for c in again["candidates"] if not c["reused_from"]]
    assert {c["hash"] for c in reused} == trained_first and len(trained) == 4
    assert not {c["hash"] for c in trained} & trained_first, "0 candidates retrained that the first search trained"
    assert again["best"]["val_accuracy"] >= first["best"]["val_accuracy"]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert not candidate_runs(client, "nas-digits", "RUNNING")
    copies = [client.get_run(c["mlflow_run_id"]) for c in reused]
    source = {c["mlflow_run_id"] for c in first["candidates"]}
    assert all(r.data.tags["nas.reused_from"] in source and r.info.status == "FINISHED" for r in copies)


def test_a_warm_start_with_a_time_budget_stops_in_time_and_still_exports(store):
    project, env = store
    proc = _search(project, env, "--budget", "200", "--population", "2", "--epochs", "2", "--quiet", "--output", "warm",
                   "--warm-start", "auto", "--time-budget", "20s")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = _summary(project / "warm")
    assert summary["stop_reason"] == "time" and summary["time_budget_seconds"] == 20.0
    assert summary["warm_start"]["told"] == 8 and summary["warm_start"]["mode"] == "auto"
    assert 0 < len(summary["candidates"]) < 200
    assert (project / "warm" / "model.onnx").is_file() and summary["best"]["onnx_path"]
    earlier = {c["hash"] for folder in ("first", "again") for c in _summary(project / folder)["candidates"]}
    assert not {c["hash"] for c in summary["candidates"]} & earlier, "nothing told is proposed again"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert not candidate_runs(client, "nas-digits", "RUNNING"), "nothing left RUNNING"
    assert "stopped proposing: time" in proc.stdout


def test_a_warm_start_from_a_search_of_another_space_is_refused_before_anything_is_written(tmp_path):
    project, env = make_project(tmp_path / "project"), nas_env(tmp_path)
    table = write_table(tmp_path / "toy_table.json")
    shared = ["--experiment", "shared", "--quiet"]
    done = _search(project, env, "--evaluator", f"table:{table}", "--space", "nb201", "--select-metric", "val",
                   "--report-metric", "test", "--budget", "2", "--population", "2", "--output", "table", *shared)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    search_id = _summary(project / "table")["search_id"]
    refused = _search(project, env, "--warm-start", search_id, "--output", "image", *SMALL, *shared)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: warm_start: search '{search_id}' searched space 'nb201'")
    assert not (project / "image").exists(), "nothing written"
