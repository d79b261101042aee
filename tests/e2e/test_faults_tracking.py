"""The tracking server goes away while candidates train: a short outage is ridden out; one longer than
``--tracking-timeout`` stops the search in one line (exit 1) and ``--resume`` finishes it once the server is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests import conftest
from tests.conftest import MlflowServer, make_project
from tests.e2e.faults import NAS, check_search_completed, nas_env, seconds_to_exit, start_search


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MlflowServer]:
    (tmp_path / "server").mkdir()
    running = MlflowServer(tmp_path / "server")
    running.start()
    running.wait_ready()
    yield running
    running.stop()


def restart_on_the_same_port(server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    monkeypatch.setattr(conftest, "free_port", lambda: port)  # MlflowServer.start picks its port through it
    server.start()
    server.wait_ready()


def _search(tmp_path: Path, server: MlflowServer, timeout_s: int, epochs: int):
    project = make_project(tmp_path / "project")
    out, env = project / "out", nas_env(tmp_path, server.url)
    args = ["--budget", "2", "--epochs", str(epochs), "--population", "2", "--workers", "2", "--seed", "5",
            "--tracking-timeout", str(timeout_s), "--output", str(out), "--project-dir", str(project), "--quiet"]  # fmt: skip
    return project, out, env, start_search(args, project, env, tmp_path / "first.log")


def test_a_short_outage_is_ridden_out(tmp_path, server, monkeypatch):
    project, out, env, proc = _search(tmp_path, server, timeout_s=120, epochs=6)
    client = MlflowClient(server.url)

    def outage() -> None:
        server.stop()
        time.sleep(8)
        restart_on_the_same_port(server, monkeypatch)

    seconds_to_exit(proc, client, outage, timeout=600)
    log = (tmp_path / "first.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    check_search_completed(client, out, 2)


def test_a_long_outage_stops_resumably_then_resume_finishes(tmp_path, server, monkeypatch):
    import subprocess

    bound = 20
    project, out, env, proc = _search(tmp_path, server, timeout_s=bound, epochs=10)
    client = MlflowClient(server.url)
    took = seconds_to_exit(proc, client, server.stop, timeout=300)
    log = (tmp_path / "first.log").read_text()
    assert proc.returncode == 1, log[-3000:]
    assert took < bound + 60, f"stopped {took:.0f} s into the outage (bound {bound} s)"
    last = log.strip().splitlines()[-1]
    assert "unreachable" in last and f"--resume {out}" in last, log[-3000:]
    assert "Traceback" not in log, "one line, no traceback wall"
    assert (out / "state.json").is_file()

    restart_on_the_same_port(server, monkeypatch)
    resumed = subprocess.run(NAS + ["--resume", str(out), "--project-dir", str(project), "--quiet"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    check_search_completed(client, out, 2)
