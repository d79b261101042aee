"""A team store on a real database: `nas up --backend-store postgresql://...` in a fresh project, then eight processes
logging at once, two searches at once, and a search killed with SIGKILL and resumed, all through that MLflow server.

PostgreSQL runs for this module only, on loopback, from a temporary folder. Where its binaries are missing, Debian's
``postgresql`` package is installed (as root, with apt-get); where that cannot be done, the module is skipped.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import apt_install, free_port, make_project
from tests.e2e.faults import candidate_runs, check_search_completed, nas_env, start_search, wait_for
from tests.e2e.test_faults_concurrency import _two_at_once, check_champion_story
from tests.e2e.test_mlflow_concurrent_logging import (
    EXPERIMENT,
    RUNS_PER_WORKER,
    WORKERS,
    check_everything_arrived,
    run_round,
    worker_pool,
)

NAS = [sys.executable, "-m", "flows.cli"]
DATABASE = "mlflow"
OWNER = "postgres"  # the server refuses to run as root: as root, it runs as this user
SEARCHES = "nas-digits"
KILLED_SEARCH = ["--budget", "4", "--population", "2", "--epochs", "2", "--workers", "2", "--seed", "5", "--quiet"]


# ---- PostgreSQL on loopback ------------------------------------------------------------------


def _bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin."""
    found = []
    if pg_config := shutil.which("pg_config"):
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=60)
        found.append(Path(done.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    found += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    return next((folder for folder in found if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file()), None)


def _bindir_or_skip() -> Path:
    bindir = _bindir()
    why = "" if bindir else apt_install("postgresql")
    bindir = bindir or _bindir()
    if bindir is None:
        why = why or "no initdb after apt-get"
        pytest.skip(f"PostgreSQL is not installed and could not be installed ({why}); install it: apt-get install postgresql")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running PostgreSQL as root needs runuser (util-linux) to switch to another user")
    return bindir


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", OWNER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], folder: Path) -> None:
    """Run a PostgreSQL command in ``folder``; fail with its output and the server's log when it fails."""
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        log = folder / "server.log"
        tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}{tail}")


def _owned_folder() -> Path:
    """A temporary folder the server's user owns (as root: ``postgres``; skipped when there is no such user)."""
    folder = Path(tempfile.mkdtemp(prefix="nas-tests-postgres-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(OWNER)
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip(f"no '{OWNER}' user to run PostgreSQL as (it refuses root); install it: apt-get install postgresql")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    return folder


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """URI of an empty database on a PostgreSQL server of its own: loopback only, trust auth, sockets in its folder."""
    bindir = _bindir_or_skip()
    folder = _owned_folder()
    data, port = folder / "data", free_port()
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=trust"]
        _run(_as_owner([*initdb, "-E", "UTF8", "--no-sync"]), folder)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
        pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
        _run(_as_owner([*pg_ctl, "-l", str(folder / "server.log"), "-o", options, "-w", "-t", "120", "start"]), folder)
        try:
            _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE], folder)
            yield f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
        finally:
            _run(_as_owner([*pg_ctl, "stop", "-m", "fast"]), folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- `nas up` on it ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    project: Path
    env: dict[str, str]  # of `nas` processes: no PREFECT_API_URL / MLFLOW_TRACKING_URI, so they find the stack
    url: str  # the MLflow server
    database: str


def _nas(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(NAS + list(args), cwd=project, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def stack(postgres, tmp_path_factory) -> Iterator[Stack]:
    """A fresh project with `nas up --backend-store postgresql://...` running; `nas down` at the end."""
    root = tmp_path_factory.mktemp("postgres-stack")
    project, env = make_project(root / "project"), nas_env(root)
    env.pop("PREFECT_API_URL", None)
    ports = [str(free_port()), str(free_port()), str(free_port())]
    up = ["up", "--prefect-port", ports[0], "--mlflow-port", ports[1], "--worker-port", ports[2], "--backend-store", postgres]
    started = _nas(project, env, *up)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield Stack(project, env, f"http://127.0.0.1:{ports[1]}", postgres)
    finally:
        stopped = _nas(project, env, "down")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _count(database: str, query: str, *params: object) -> int:
    with psycopg.connect(database) as connection:
        return connection.execute(query, params).fetchone()[0]


def _candidates(client: MlflowClient, search_id: str, status: str) -> list[str]:
    """Run ids of the search's candidate runs in ``status``."""
    return sorted(r.info.run_id for r in candidate_runs(client, SEARCHES, status) if r.data.tags["nas.search_id"] == search_id)


# ---- the checks -------------------------------------------------------------------------------


def test_eight_processes_log_through_the_server_into_postgres(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # inherited by the spawned writers
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with worker_pool() as pool:
        parent, logged = run_round(pool, stack.url, tmp_path / "unused-artifacts")  # the server decides where they go
    check_everything_arrived(stack.url, parent, logged, tmp_path / "downloads")
    runs = "select count(*) from runs join experiments using (experiment_id) where experiments.name = %s"
    assert _count(stack.database, runs, EXPERIMENT) == WORKERS * RUNS_PER_WORKER + 1  # the candidates and their parent
    assert len(list((stack.project / "mlartifacts").rglob("result.json"))) == WORKERS * RUNS_PER_WORKER


def test_two_searches_at_once_finish_and_register_through_the_server(stack, tmp_path):
    _two_at_once(tmp_path, stack.project, stack.env, 1)
    client = MlflowClient(stack.url)
    for seed in (1, 2):
        assert f"MLflow: {stack.url}" in (tmp_path / f"search-1-{seed}.log").read_text()  # said in its first line
        summary = check_search_completed(client, stack.project / f"out-1-{seed}", 2)
        assert summary["mlflow_tracking_uri"] == stack.url
        assert [client.get_run(c["mlflow_run_id"]).info.status for c in summary["candidates"]] == ["FINISHED"] * 2
    assert candidate_runs(client, SEARCHES, "RUNNING") == []
    check_champion_story(client, 2)
    registered = "select count(*) from model_versions where name = %s"
    assert _count(stack.database, registered, SEARCHES) == 2
    assert not (stack.project / "mlflow.db").exists(), "nothing fell back to the project's SQLite store"


def test_a_search_killed_mid_way_resumes_through_the_server(stack, tmp_path):
    out, client = stack.project / "killed", MlflowClient(stack.url)
    proc = start_search([*KILLED_SEARCH, "--output", str(out)], stack.project, stack.env, tmp_path / "killed.log")
    try:
        wait_for(lambda: (out / "search.json").is_file(), 600, "search.json", proc)
        search_id = json.loads((out / "search.json").read_text())["search_id"]

        def second_generation_training() -> bool:
            return len(_candidates(client, search_id, "FINISHED")) == 2 and len(_candidates(client, search_id, "RUNNING")) == 2

        wait_for(second_generation_training, 900, "the first generation finished and the second training", proc)
        finished_before = _candidates(client, search_id, "FINISHED")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
    resumed = _nas(stack.project, stack.env, "search", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"MLflow: {stack.url}" in resumed.stderr
    summary = check_search_completed(client, out, 4)
    assert summary["search_id"] == search_id and summary["mlflow_tracking_uri"] == stack.url
    assert sorted(c["mlflow_run_id"] for c in summary["candidates"][:2]) == finished_before, "kept, not trained again"
    assert _candidates(client, search_id, "RUNNING") == []
