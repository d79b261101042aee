"""A tracking server set by MLFLOW_TRACKING_URI that does not answer: one line, exit 1, before anything is written."""

from __future__ import annotations

import time

from flows.cli import EXIT_FAILED, main
from tests.conftest import free_port


def test_an_unanswering_tracking_server_is_one_line_and_exit_1_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    started = time.monotonic()
    code = main(["search", "--budget", "1", "--epochs", "1", "--output", str(tmp_path / "out"), "--project-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_FAILED, err
    assert time.monotonic() - started < 60, "a short timeout, not MLflow's minutes of retries"
    assert err.splitlines() == [err] and err.startswith("error: ")
    assert url in err and "does not answer" in err and "MLFLOW_TRACKING_URI" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no output folder, no mlflow.db, no data"
