"""Deployments against a real Prefect server: nas deploy with a worker, serve, and prefect deploy from prefect.yaml."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from flows import deployments as dep
from nas_core.config import SearchConfig
from tests.conftest import REPO_ROOT, make_project
from tests.flows.test_deployments import PREFECT, SETTINGS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(env: dict[str, str], method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or "null")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Stop a process started in its own session, and everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # the children it left (a flow run, a multiprocessing helper)
        os.killpg(proc.pid, signal.SIGKILL)


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, signal.SIGKILL)
        pytest.fail(f"{' '.join(args[:3])} did not finish in {timeout} s")
    finally:
        _stop(proc, signal.SIGKILL)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`prefect server start` on a free loopback port; the environment of the programs that use it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
    )
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _api(env, "GET", "/health") is True:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        _stop(proc)
        log.close()


def _deployment(env: dict[str, str], name: str) -> dict[str, Any]:
    return _api(env, "GET", f"/deployments/name/{dep.FLOW_NAME}/{name}")


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)
    return result


@pytest.mark.slow
def test_nas_deploy_schedules_a_search_that_a_worker_runs(server, tmp_path):
    """`nas deploy` -> schedule on the server -> one run triggered -> a process worker runs it -> MLflow + summary."""
    project = make_project(tmp_path / "project")
    (tmp_path / "nightly.yaml").write_text(SETTINGS)
    args = ["deploy", "--config", "nightly.yaml", "--project-dir", "project", "--name", "test-nightly"]
    deployed = _run(
        [sys.executable, "-m", "flows.cli", *args, "--cron", "0 3 * * *", "--timezone", "Europe/Berlin"], server, tmp_path, 120
    )
    assert deployed.returncode == 0, deployed.stderr
    assert f"prefect worker start --pool '{dep.DEFAULT_POOL}'" in deployed.stdout
    assert f"prefect deployment run '{dep.FLOW_NAME}/test-nightly'" in deployed.stdout

    deployment = _deployment(server, "test-nightly")
    (schedule,) = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * *" and schedule["schedule"]["timezone"] == "Europe/Berlin"
    assert schedule["active"] and not deployment["paused"] and deployment["global_concurrency_limit"]["limit"] == 1
    settings = {"budget": 2, "epochs": 1, "population": 2, "workers": 1, "seed": 3, "project_dir": str(project.resolve())}
    assert deployment["parameters"] == {"config": settings}
    assert deployment["entrypoint"] == dep.ENTRYPOINT and deployment["work_pool_name"] == dep.DEFAULT_POOL
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    pool = _api(server, "GET", f"/work_pools/{dep.DEFAULT_POOL}")
    assert pool["type"] == "process"

    # the server's scheduler turned the cron into runs at 03:00 Berlin time
    query = {"deployments": {"id": {"any_": [deployment["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    upcoming = _wait_for(lambda: _api(server, "POST", "/flow_runs/filter", query), 30, "scheduled runs")
    for run in upcoming:
        start = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00")).astimezone(ZoneInfo("Europe/Berlin"))
        assert (start.hour, start.minute) == (3, 0)

    # a second deploy of the same name replaces its schedule and parameters
    (tmp_path / "nightly.yaml").write_text(SETTINGS.replace("seed: 3", "seed: 4"))
    again = _run([sys.executable, "-m", "flows.cli", *args, "--cron", "15 4 * * 6"], server, tmp_path, 120)
    assert again.returncode == 0, again.stderr
    redeployed = _deployment(server, "test-nightly")
    assert [s["schedule"]["cron"] for s in redeployed["schedules"]] == ["15 4 * * 6"]
    assert redeployed["id"] == deployment["id"] and redeployed["parameters"]["config"]["seed"] == 4

    flow_run = _api(server, "POST", f"/deployments/{deployment['id']}/create_flow_run", {})
    worker = _run(
        [PREFECT, "worker", "start", "--pool", dep.DEFAULT_POOL, "--type", "process", "--run-once"], server, tmp_path, 300
    )
    state = _api(server, "GET", f"/flow_runs/{flow_run['id']}")["state"]
    assert state["type"] == "COMPLETED", f"{state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"
    logs = {"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}}
    outcome = _wait_for(  # the run's logs in the Prefect UI say where the results are (logs arrive in batches)
        lambda: [log["message"] for log in _api(server, "POST", "/logs/filter", logs) if "summary.json" in log["message"]],
        20,
        "logs",
    )

    from mlflow.tracking import MlflowClient

    tracking = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = tracking.get_experiment_by_name("nas-digits")
    (search,) = tracking.search_runs([experiment.experiment_id], "tags.`nas.role` = 'search'")
    candidates = tracking.search_runs([experiment.experiment_id], "tags.`nas.role` = 'candidate'")
    assert search.info.status == "FINISHED" and search.data.params["seed"] == "4"  # the deployment's parameters
    assert len(candidates) == 2 and all(c.info.status == "FINISHED" for c in candidates)
    search_id = search.data.tags["nas.search_id"]
    assert f"search {search_id}: best " in outcome[0]
    summary = json.loads((project / "outputs" / search_id / "summary.json").read_text())
    assert summary["mlflow_run_id"] == search.info.run_id and len(summary["candidates"]) == 2
    assert summary["best"] is not None and Path(summary["best"]["onnx_path"]).is_file()


@pytest.mark.slow
def test_nas_deploy_serve_registers_and_pauses_on_stop(server, tmp_path):
    project = make_project(tmp_path / "project").resolve()
    args = [sys.executable, "-m", "flows.cli", "deploy", "--serve", "--project-dir", str(project), "--name", "served"]
    proc = subprocess.Popen(
        args, env=server, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:

        def served() -> dict[str, Any] | None:
            """The deployment once its runner polls for runs (READY); stopped before that, serve cannot pause it."""
            try:
                found = _deployment(server, "served")
            except urllib.error.HTTPError:
                found = None
            assert proc.poll() is None, proc.stdout.read()
            return found if found and found.get("status") == "READY" else None

        deployment = _wait_for(served, 90, "the served deployment")
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == [dep.DEFAULT_CRON]
        assert deployment["parameters"] == {"config": {"project_dir": str(project)}} and not deployment["paused"]
        assert (
            deployment["work_pool_name"] is None and deployment["global_concurrency_limit"]["limit"] == 1
        )  # runs execute in this process
    finally:
        _stop(proc)
    assert proc.returncode is not None
    assert _deployment(server, "served")["paused"]  # its schedule stops with it


@pytest.mark.slow
def test_prefect_yaml_deploys_with_the_prefect_cli(server):
    """`prefect deploy --all` from the repository accepts prefect.yaml: nightly cron, process pool, this folder."""
    try:
        _api(server, "POST", "/work_pools/", {"name": dep.DEFAULT_POOL, "type": "process"})
    except urllib.error.HTTPError as exc:
        assert exc.code == 409  # created by an earlier test
    result = _run([PREFECT, "--no-prompt", "deploy", "--all"], server, REPO_ROOT, 120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    deployment = _deployment(server, "nightly")
    assert deployment["entrypoint"] == dep.ENTRYPOINT and deployment["work_pool_name"] == dep.DEFAULT_POOL
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]
    assert deployment["parameters"]["config"]["project_dir"] == str(REPO_ROOT)
    assert SearchConfig(**deployment["parameters"]["config"]).budget == 20
    (schedule,) = deployment["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC" and schedule["active"]
    assert deployment["global_concurrency_limit"]["limit"] == 1
