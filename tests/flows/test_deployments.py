"""Scheduled searches: deployment settings and schedules, then a real Prefect server, `nas deploy`, a worker and MLflow."""

from __future__ import annotations

import ast
import contextlib
import inspect
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
from flows.cli import EXIT_FAILED, EXIT_USAGE, main
from nas_core.config import ConfigError, SearchConfig, load_config
from tests.conftest import REPO_ROOT, make_project

BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
SETTINGS = "budget: 2\nepochs: 1\npopulation: 2\nworkers: 1\nseed: 3\n"


# ---- settings and schedules (no server) -----------------------------------------------------------


def test_cron_schedule_validates_cron_and_timezone():
    schedule = dep.cron_schedule("30 1 * * 1-5", "Europe/Berlin")
    assert (schedule.cron, schedule.timezone) == ("30 1 * * 1-5", "Europe/Berlin")
    for cron in ("61 * * * *", "0 2 * *", "every night", "H 2 * * *"):
        with pytest.raises(dep.DeployError, match="invalid cron"):
            dep.cron_schedule(cron)
    with pytest.raises(dep.DeployError, match="unknown timezone 'Mars/Olympus'"):
        dep.cron_schedule("0 2 * * *", "Mars/Olympus")


def test_parameters_keep_the_given_settings_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "proj").mkdir()
    (tmp_path / "search.yaml").write_text(
        SETTINGS + "project_dir: proj\ninit_genome: g.json\nevaluator: table:t.json\nspace: nb201\n"
    )
    params = dep.search_parameters(load_config(Path("search.yaml")))
    assert params == {
        "config": {
            "budget": 2, "epochs": 1, "population": 2, "workers": 1, "seed": 3, "space": "nb201",
            "project_dir": str(tmp_path / "proj"), "init_genome": str(tmp_path / "g.json"),
            "evaluator": f"table:{tmp_path / 't.json'}",
        }
    }  # fmt: skip
    # settings left out are not frozen: workers defaults to the cores of the machine that runs the search
    assert set(dep.search_parameters(load_config(None))["config"]) == {"project_dir"}


def test_a_fixed_output_folder_is_refused(tmp_path):
    with pytest.raises(dep.DeployError, match="'output' is set"):
        dep.search_parameters(load_config(None, {"output": tmp_path / "out"}))
    with pytest.raises(ConfigError, match="'output' is set"):
        dep.run_settings({"output": str(tmp_path)}, None, "id")


def test_each_run_gets_its_own_output_in_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nightly.yaml").write_text("budget: 7\nepochs: 2\n")
    settings = dep.run_settings({"epochs": 3, "project_dir": "."}, "nightly.yaml", "20260101-020000-abcdef")
    assert (settings.budget, settings.epochs) == (7, 3)  # the file, then the parameters
    assert settings.project_dir == tmp_path
    assert settings.output == tmp_path / "outputs" / "20260101-020000-abcdef"
    with pytest.raises(ConfigError, match="unknown setting 'budgett'"):
        dep.run_settings({"budgett": 1}, None, "id")


def test_a_tracking_server_given_at_deploy_time_stays_the_deployments(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert dep._job_variables() == {}  # runs log to <project_dir>/mlflow.db (or the worker's MLFLOW_TRACKING_URI)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert dep._job_variables() == {"env": {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}}


def _one_line_error(capsys, args: list[str], code: int, expected: str) -> None:
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err


def test_deploy_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "out.yaml").write_text("output: somewhere\n")
    base = ["deploy", "--project-dir", str(tmp_path)]
    _one_line_error(capsys, [*base, "--cron", "0 25 * * *"], EXIT_USAGE, "invalid cron '0 25 * * *'")
    _one_line_error(capsys, [*base, "--timezone", "Moon/Base"], EXIT_USAGE, "unknown timezone")
    _one_line_error(capsys, [*base, "--config", str(tmp_path / "out.yaml")], EXIT_USAGE, "'output' is set")
    _one_line_error(capsys, ["deploy", "--project-dir", str(tmp_path / "missing")], EXIT_USAGE, "does not exist")
    assert {p.name for p in tmp_path.iterdir()} == {"out.yaml"}


def test_deploy_needs_a_prefect_server(tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        _one_line_error(capsys, ["deploy", "--project-dir", str(tmp_path)], EXIT_USAGE, "start one with `prefect server start`")
    closed = f"http://127.0.0.1:{_free_port()}/api"
    with temporary_settings({PREFECT_API_URL: closed, PREFECT_CLIENT_MAX_RETRIES: 0}):
        _one_line_error(
            capsys, ["deploy", "--project-dir", str(tmp_path)], EXIT_FAILED, f"the Prefect server at {closed} does not answer"
        )


def test_prefect_yaml_settings_are_valid():
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (deployment,) = spec["deployments"]
    assert deployment["entrypoint"] == dep.ENTRYPOINT and deployment["work_pool"]["name"] == dep.DEFAULT_POOL
    config = {k: v for k, v in deployment["parameters"]["config"].items() if k != "project_dir"}
    assert load_config(None, config) == SearchConfig(**config)
    dep.cron_schedule(deployment["schedules"][0]["cron"], deployment["schedules"][0]["timezone"])


# ---- a real Prefect server ----------------------------------------------------------------------


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


def test_deployments_do_not_import_the_command_line():
    """flows.cli imports flows.deployments (nas deploy); the shared settings helpers live in nas_core.config."""
    tree = ast.parse((REPO_ROOT / "flows" / "deployments.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    assert "flows" in {name.split(".")[0] for name in imported}  # flows.search: the check sees the imports
    assert [name for name in imported if name == "flows.cli" or name.startswith("flows.cli.")] == []


def test_prefect_yaml_parameters_are_flow_parameters_and_settings():
    import yaml

    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    flow_parameters = set(inspect.signature(dep.scheduled_search.fn).parameters)
    for deployment in spec["deployments"]:
        assert set(deployment["parameters"]) <= flow_parameters
        assert set(deployment["parameters"]["config"]) <= set(SearchConfig.model_fields)
