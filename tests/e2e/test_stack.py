"""`nas up` / `nas status` / `nas down` as a user runs them: both servers and the search worker started for a
project, a search that runs in the worker, its flow run in the Prefect UI and its runs in the MLflow UI (headless
Chromium), a search stopped by Ctrl-C in the worker, then exactly those services stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.search_worker import ConsoleFiles
from flows.stack import free_search_worker
from tests.conftest import free_port, make_project
from tests.e2e.faults import candidate_runs, nas_env, start_search, wait_for
from tests.e2e.test_mlflow_ui import ARTIFACTS, Browser, assert_screenshot, text_has

NAS = [sys.executable, "-m", "flows.cli"]
WORKER_FLAGS = {"searches": "worker"}  # the service's name -> its port flag's
SEARCH = ("--budget", "2", "--population", "2", "--epochs", "2", "--quiet")


def _nas(project: Path, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(NAS + list(args), cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def _post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def stack(chromium, tmp_path_factory):
    """A project with `nas up` running (Chromium asked for first: a missing browser skips before anything boots)."""
    root = tmp_path_factory.mktemp("stack")
    project, env = make_project(root / "project"), nas_env(root)
    env.pop("PREFECT_API_URL", None)
    ports = {"prefect": free_port(), "mlflow": free_port(), "searches": free_port()}
    flags = [item for name, port in ports.items() for item in (f"--{WORKER_FLAGS.get(name, name)}-port", str(port))]
    started = _nas(project, env, "up", *flags)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield project, env, {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        _nas(project, env, "down")


@pytest.fixture(scope="module")
def searched(stack):
    project, env, urls = stack
    proc = _nas(project, env, "search", *SEARCH, "--output", "out")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, json.loads((project / "out" / "summary.json").read_text())


def test_status_shows_both_servers_answering(stack):
    project, env, urls = stack
    proc = _nas(project, env, "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"prefect: {urls['prefect']} answers" in proc.stdout and f"mlflow: {urls['mlflow']} answers" in proc.stdout
    assert f"searches: {urls['searches']} answers" in proc.stdout


def test_a_search_uses_the_running_servers_and_says_so_first(stack, searched):
    _, _, urls = stack
    proc, summary = searched
    first = proc.stderr.splitlines()[0]  # progress and notes go to stderr, the results to stdout
    assert f"Prefect: {urls['prefect']}/api" in first and f"MLflow: {urls['mlflow']}" in first
    assert f"runs in the warm search worker {urls['searches']}" in first
    assert "summary: " in proc.stdout and "MLflow runs:" in proc.stdout, "the worker's output is printed by the command"
    assert summary["mlflow_tracking_uri"] == urls["mlflow"]
    client = MlflowClient(urls["mlflow"])
    assert {client.get_run(c["mlflow_run_id"]).info.status for c in summary["candidates"]} == {"FINISHED"}
    assert "View run" not in proc.stdout + proc.stderr, "MLflow's per-run links stay off the terminal"


def test_the_prefect_and_mlflow_uis_show_the_search(stack, searched, chromium, tmp_path):
    _, _, urls = stack
    _, summary = searched
    flow_runs = _post(f"{urls['prefect']}/api/flow_runs/filter", {"limit": 50})
    flow_run = next(r for r in flow_runs if r["parameters"].get("search_id") == summary["search_id"])
    assert flow_run["state_type"] == "COMPLETED"
    tasks = _post(f"{urls['prefect']}/api/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}, "limit": 200})
    assert sum(t["name"].startswith("train_candidate") for t in tasks) == 2
    client = MlflowClient(urls["mlflow"])
    candidate_names = sorted(client.get_run(c["mlflow_run_id"]).info.run_name for c in summary["candidates"])
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(f"{urls['prefect']}/runs/flow-run/{flow_run['id']}")
        browser.wait_for(text_has(flow_run["name"]), f"the flow run {flow_run['name']} in the Prefect UI")
        assert_screenshot(browser.screenshot(ARTIFACTS / "prefect-ui-flow-run.png"))
        experiment = client.get_run(summary["mlflow_run_id"]).info.experiment_id
        browser.open(f"{urls['mlflow']}/#/experiments/{experiment}/runs/{summary['candidates'][0]['mlflow_run_id']}")
        browser.wait_for(text_has(candidate_names[0]) + " || " + text_has(candidate_names[1]), "a candidate run in MLflow")
    finally:
        browser.close()


def test_in_process_runs_the_search_in_the_command_with_the_results_of_the_worker(stack, searched):
    project, env, urls = stack
    proc = _nas(project, env, "search", *SEARCH, "--output", "here", "--in-process")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    first = proc.stderr.splitlines()[0]
    assert f"Prefect: {urls['prefect']}/api" in first and "search worker" not in first
    here = json.loads((project / "here" / "summary.json").read_text())
    assert not ConsoleFiles.of(project, here["search_id"]).out.exists()
    results = [
        sorted((c["hash"], c["val_accuracy"], c["val_f1"], c["test_accuracy"]) for c in s["candidates"])
        for s in (here, searched[1])
    ]
    assert results[0] == results[1], "the same search in the command and in the warm worker: the same networks, the same figures"


def test_ctrl_c_stops_the_search_in_the_worker_resumably_and_frees_the_worker(stack, searched, tmp_path):
    project, env, urls = stack
    log = tmp_path / "search.log"
    proc = start_search(["--budget", "2", "--population", "2", "--epochs", "200", "--output", "stopped"], project, env, log)
    try:
        wait_for(lambda: "training generation 1" in log.read_text(), 300, "the first generation to train", proc)
        proc.send_signal(signal.SIGINT)  # the command only: the worker is another process group
        assert proc.wait(timeout=300) == 130, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "runs in the warm search worker" in output.splitlines()[0]
    assert "stopped on request: runs in flight marked KILLED, checkpoint kept" in output
    assert (project / "stopped" / "search.json").is_file() and not (project / "stopped" / "summary.json").exists()
    saved = json.loads((project / "stopped" / "search.json").read_text())
    killed = candidate_runs(MlflowClient(urls["mlflow"]), searched[1]["mlflow_experiment"], "KILLED")
    assert {r.data.tags["nas.search_id"] for r in killed} == {saved["search_id"]}, "its candidates' runs were closed KILLED"
    wait_for(lambda: free_search_worker(project) == urls["searches"], 60, "the worker to be free again")


def test_down_stops_exactly_what_up_started_and_the_search_running_in_it(stack, searched, tmp_path):
    """SIGTERM stops each service (none is left for SIGKILL); the worker stops its search first, resumably."""
    project, env, _ = stack
    recorded = json.loads((project / ".nas" / "stack.json").read_text())["services"]
    assert all(_alive(service["pid"]) for service in recorded)
    log = tmp_path / "search.log"
    search = start_search(["--budget", "2", "--population", "2", "--epochs", "200", "--output", "downed"], project, env, log)
    try:
        wait_for(lambda: "training generation 1" in log.read_text(), 300, "the first generation to train", search)
        proc = _nas(project, env, "down")
        assert search.wait(timeout=300) == 130, log.read_text()[-2000:]
    finally:
        if search.poll() is None:
            search.kill()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"prefect: stopped", "mlflow: stopped", "searches: stopped"} <= set(proc.stdout.splitlines()), proc.stdout
    assert not any(_alive(service["pid"]) for service in recorded)
    assert _nas(project, env, "status").returncode == 1
    assert "runs in the warm search worker" in log.read_text().splitlines()[0]
    assert "stopped on request: runs in flight marked KILLED, checkpoint kept" in log.read_text()
    assert (project / "downed" / "search.json").is_file() and not (project / "downed" / "summary.json").exists()


def test_after_down_the_project_searches_on_its_own_store(stack, searched):
    """The experiment the server created keeps its artifacts as files in the project (not behind the server), so a
    search after `nas down` logs to the same experiment through mlflow.db."""
    project, env, _ = stack
    _nas(project, env, "down")
    proc = _nas(project, env, "search", "--budget", "1", "--epochs", "1", "--output", "after", "--quiet")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((project / "after" / "summary.json").read_text())
    assert summary["mlflow_tracking_uri"].startswith("sqlite:///")
    assert summary["mlflow_experiment"] == searched[1]["mlflow_experiment"]
    run = MlflowClient(summary["mlflow_tracking_uri"]).get_run(summary["mlflow_run_id"])
    assert run.info.artifact_uri.startswith((project / "mlartifacts").resolve().as_uri())


def test_the_worker_s_warm_up_loads_what_a_search_would_load_first(tmp_path):
    """What the first search after `nas up` would otherwise pay for: the report's matplotlib, the exporter's registry
    of ONNX functions (kept for the process), DVC's modules for the data push."""
    check = (
        "import sys; from flows.search_worker import warm_up; from nas_pipeline import onnx_export; warm_up(); "
        "print(sorted(m for m in ('matplotlib.figure', 'matplotlib.backends.backend_agg', 'dvc.repo.plots', "
        "'dvc_data.hashfile.state', 'onnxruntime') if m in sys.modules), len(onnx_export._registries))"
    )
    env = nas_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == (
        "['dvc.repo.plots', 'dvc_data.hashfile.state', 'matplotlib.backends.backend_agg', 'matplotlib.figure', 'onnxruntime'] 1"
    )
