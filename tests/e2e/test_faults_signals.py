"""SIGTERM and Ctrl-C (SIGINT) while candidates train in worker threads: the search stops within seconds, its
candidates' runs are KILLED (none left RUNNING), its checkpoint stays, and ``--resume`` finishes it."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import make_project
from tests.e2e.faults import NAS, candidate_runs, check_search_completed, nas_env, seconds_to_exit, start_search

PROMPT_S = 45  # generous for a loaded, shared 2-core machine (seen: 4-24 s); unstopped, 30 epochs x 2 take minutes


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_a_signal_during_training_stops_promptly_and_resumably(tmp_path, signum, code):
    project = make_project(tmp_path / "project")
    out, env = project / "out", nas_env(tmp_path)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    budget = 2
    args = ["--budget", str(budget), "--epochs", "30", "--population", "2", "--workers", "2", "--seed", "3",
            "--output", str(out), "--project-dir", str(project), "--quiet"]  # fmt: skip
    proc = start_search(args, project, env, tmp_path / "first.log")
    took = seconds_to_exit(proc, client, lambda: proc.send_signal(signum), timeout=120)
    log = (tmp_path / "first.log").read_text()
    assert proc.returncode == code, log[-3000:]
    assert took < PROMPT_S, f"exited {took:.1f} s after the signal"
    last = log.strip().splitlines()[-1]
    assert "stopped by" in last and f"--resume {out}" in last, log[-3000:]
    assert "Traceback" not in log, "no traceback on the terminal"

    assert {r.info.status for r in candidate_runs(client, "nas-digits")} == {"KILLED"}, "the candidates in flight"
    assert json.loads((out / "state.json").read_text())["finished"] == []
    search_id = json.loads((out / "search.json").read_text())["search_id"]
    parent = client.search_runs(
        [client.get_experiment_by_name("nas-digits").experiment_id],
        f"tags.`nas.search_id` = '{search_id}' and tags.`nas.role` = 'search'",
    )
    assert [r.info.status for r in parent] == ["FAILED"]

    resumed = subprocess.run(NAS + ["--resume", str(out), "--project-dir", str(project), "--quiet"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    check_search_completed(client, out, budget)
