"""MLflow Projects: `mlflow run . -e search` runs the real search, nested under the run that `mlflow run` opened."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from mlflow.exceptions import ExecutionException
from mlflow.projects._project_spec import load_project
from mlflow.tracking import MlflowClient

from flows.cli import app
from tests.conftest import REPO_ROOT, make_project

BIN = Path(sys.executable).parent
MLFLOW = str(BIN / "mlflow")


def _mlflow_run(project: Path, *args: str, prefect_api_url: str = "") -> tuple[subprocess.CompletedProcess, MlflowClient]:
    """``mlflow run <project> ...`` with the environment installed here, a SQLite store in the project; flows report
    to the Prefect server at ``prefect_api_url`` (the session's) when given."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_URL"))}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        PREFECT_HOME=str(project.parent / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `nas` resolves to this environment's
    )
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    proc = subprocess.run(
        [MLFLOW, "run", str(project), *args, "--env-manager", "local"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, MlflowClient(uri)


def _project(tmp_path: Path) -> Path:
    project = make_project(tmp_path / "project")
    shutil.copy(REPO_ROOT / "MLproject", project / "MLproject")
    return project


def _all_runs(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000)


def test_search_entry_point_makes_the_mlflow_run_the_search_parent(tmp_path, prefect_server):
    project = _project(tmp_path)
    budget = ("-P", "budget=2", "-P", "epochs=1", "-P", "population=2")
    proc, client = _mlflow_run(project, "-e", "search", *budget, prefect_api_url=prefect_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _all_runs(client)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(top) == 1, [r.info.run_name for r in top]  # no second parent beside the one `mlflow run` opened
    (parent,) = top
    assert parent.data.tags["mlflow.project.entryPoint"] == "search"
    assert parent.data.tags["nas.role"] == "search" and parent.data.tags["nas.status"] == "ok"
    assert parent.info.status == "FINISHED"  # closed by `mlflow run` after `nas search` exited 0
    assert parent.data.params["budget"] == "2" and parent.data.params["space"] == "image"  # its params, then ours
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 == len(runs) - 1
    assert {r.data.tags["nas.role"] for r in children} == {"candidate"}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.experiment_id for r in children} == {parent.info.experiment_id}  # nested in the same experiment
    search_id = parent.data.tags["nas.search_id"]
    summary = json.loads((project / "outputs" / search_id / "summary.json").read_text())
    assert summary["mlflow_run_id"] == parent.info.run_id
    assert summary["mlflow_experiment"] == client.get_experiment(parent.info.experiment_id).name
    assert (project / "outputs" / search_id / "model.onnx").is_file()
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"model", "summary.json"}


def test_prepare_entry_point_versions_the_data(tmp_path):
    project = _project(tmp_path)
    proc, client = _mlflow_run(project, "-e", "prepare")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dataset version" in proc.stdout and (project / "data.dvc").is_file()
    (run,) = _all_runs(client)
    assert run.data.tags["mlflow.project.entryPoint"] == "prepare" and run.info.status == "FINISHED"
    assert run.data.params == {"dataset": "digits"}


def test_entry_points_are_typed_and_call_the_nas_commands():
    project = load_project(str(REPO_ROOT))
    points = {name: project.get_entry_point(name) for name in ("prepare", "search", "export")}
    search = points["search"].parameters
    assert {k: p.type for k, p in search.items() if k in ("budget", "epochs", "population", "seed")} == dict.fromkeys(
        ("budget", "epochs", "population", "seed"), "float"
    )
    assert {search["dataset"].type, search["strategy"].type} == {"string"}
    export = points["export"]
    assert {k: p.type for k, p in export.parameters.items()} == {"search_id": "string", "output": "string"}
    assert export.compute_command({"search_id": "20261129-170102-3fa2c1", "output": "deploy"}, None) == (
        "nas export 20261129-170102-3fa2c1 --output deploy"
    )
    with pytest.raises(ExecutionException, match="search_id"):
        export.compute_command({"output": "deploy"}, None)  # the search to export must be named
    cli = typer.main.get_command(app)
    for name in ("prepare", "search"):  # every flag the entry point passes parses as the real command's
        words = shlex.split(points[name].compute_command({}, None))
        assert words[:2] == ["nas", name]
        cli.commands[name].make_context(name, words[2:])  # type: ignore[attr-defined]
