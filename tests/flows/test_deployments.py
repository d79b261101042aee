"""Scheduled searches: deployment settings and schedules, then a real Prefect server, `nas deploy`, a worker and MLflow."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

from flows import deployments as dep
from flows.cli import EXIT_FAILED, EXIT_USAGE, main
from nas_core.config import ConfigError, SearchConfig, load_config
from tests.conftest import REPO_ROOT, free_port

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


def test_a_scheduled_run_warm_starts_from_the_earlier_ones_unless_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dep.run_settings({}, None, "id").warm_start == "auto"
    (tmp_path / "fresh.yaml").write_text("warm_start: none\n")
    assert dep.run_settings({}, "fresh.yaml", "id").warm_start == "none"
    assert dep.run_settings({"warm_start": "reuse"}, None, "id").warm_start == "reuse"


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
    closed = f"http://127.0.0.1:{free_port()}/api"
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
