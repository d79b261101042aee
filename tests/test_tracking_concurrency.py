"""Many candidates finishing at once: no metric is lost and no candidate fails because the store is busy.

Eight worker processes log into one experiment at the same moment, first through the default SQLite store,
then through a real ``mlflow server``; afterwards every run, metric step, tag and artifact must be there.
The retry policy itself (``is_transient``/``_retry``) is unit-tested first.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from mlflow.tracking import MlflowClient

from nas_core import tracking
from nas_core.tracking import TAG_PREFIX, SearchTracker, _retry, is_transient
from tests.conftest import Flaky, MlflowServer

EXPERIMENT = "concurrency"
WORKERS = 8
RUNS_PER_WORKER = 5
STEPS = 10
ARTIFACT = "result/result.json"
BARRIER_TIMEOUT_S = 90


# ---- the retry policy ------------------------------------------------------------------------


def _wrapped(cause: BaseException, message: str) -> MlflowException:
    """An MlflowException raised while handling ``cause``, the way MLflow's REST client wraps request errors."""
    try:
        try:
            raise cause
        except BaseException:
            raise MlflowException(message)  # noqa: B904  (implicit __context__, as in mlflow.utils.rest_utils)
    except MlflowException as exc:
        return exc


TRANSIENT = {
    "sqlite-locked": MlflowException("(sqlite3.OperationalError) database is locked"),
    "sqlite-busy": MlflowException("database is busy"),
    "temporarily-unavailable-code": RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}),
    "temporarily-unavailable-text": MlflowException("the service is temporarily unavailable"),
    "raw-sqlalchemy-locked": sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
    "http-429": MlflowException("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 429 != 200"),
    "http-502": MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 502 != 200"),
    "http-503-retries": MlflowException(
        "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool"
        "(host='127.0.0.1', port=5000): Max retries exceeded (Caused by ResponseError('too many 503 error responses'))"
    ),
    "http-504": MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 504 != 200"),
    "requests-connection": requests.exceptions.ConnectionError("Connection refused"),
    "builtin-connection": ConnectionResetError("Connection reset by peer"),
    "timeout": TimeoutError("timed out"),
    "wrapped-connection": _wrapped(requests.exceptions.ConnectionError("boom"), "API request to http://h failed"),
}

DETERMINISTIC = {
    "does-not-exist": RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'abc' not found"}),
    "invalid-parameter": MlflowException("Invalid value for metric", error_code=INVALID_PARAMETER_VALUE),
    "invalid-parameter-mentioning-lock": RestException(
        {"error_code": "INVALID_PARAMETER_VALUE", "message": "param 'note'='database is locked' was already logged"}
    ),
    "missing-table": MlflowException("(sqlite3.OperationalError) no such table: runs", error_code=TEMPORARILY_UNAVAILABLE),
    "plain-mlflow": MlflowException("Run 'abc' not found"),
    "oserror": OSError("database is locked"),
    "training": RuntimeError("CUDA out of memory"),
}


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_is_transient_recognises_a_busy_or_unreachable_store(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_is_transient_rejects_deterministic_errors(error):
    assert not is_transient(error)


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_retry_retries_twice_then_returns(error, sleeps):
    call = Flaky(error, error)
    assert _retry(call) == "done"
    assert call.calls == 3
    assert sleeps == [pytest.approx(0.2), pytest.approx(0.4)]


@pytest.mark.parametrize("error", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_retry_raises_a_deterministic_error_after_one_call(error, sleeps):
    call = Flaky(error, error)
    with pytest.raises(type(error)):
        _retry(call)
    assert call.calls == 1
    assert sleeps == []


def test_retry_backs_off_exponentially_within_a_bounded_total_wait(sleeps):
    call = Flaky(*[MlflowException("database is locked") for _ in range(20)])
    with pytest.raises(MlflowException, match="locked"):
        _retry(call)
    assert call.calls == 8
    assert sleeps == sorted(sleeps) and sleeps[1] == pytest.approx(2 * sleeps[0])
    assert 10 < sum(sleeps) < 30


# ---- the worker processes --------------------------------------------------------------------

_BARRIER: Any = None
_TRANSIENT_SEEN: list[str] = []


def _init_worker(barrier: Any) -> None:
    """Pool initializer: keep the start barrier; count the transient errors ``_retry`` absorbs in this process."""
    global _BARRIER
    _BARRIER = barrier
    judge = tracking.is_transient

    def counting(exc: BaseException) -> bool:
        verdict = judge(exc)
        if verdict:
            _TRANSIENT_SEEN.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        return verdict

    tracking.is_transient = counting  # _retry looks the name up at call time


def expected_metrics(worker: int, index: int, step: int) -> dict[str, float]:
    return {"loss": 1.0 / (step + 1) + worker + index / 10, "accuracy": step / STEPS + worker / 100 + index / 1000}


def log_candidates(uri: str, artifact_root: str, parent_run_id: str, worker: int) -> dict[str, Any]:
    """One worker: ``RUNS_PER_WORKER`` nested candidate runs logged step by step, as concurrent candidates do."""
    del _TRANSIENT_SEEN[:]
    _BARRIER.wait(BARRIER_TIMEOUT_S)  # every worker in its own process, all starting together
    tracker = SearchTracker(uri, EXPERIMENT, Path(artifact_root))
    runs = {}
    for index in range(RUNS_PER_WORKER):
        name = f"w{worker}-c{index}"
        params = {"worker": worker, "index": index, "lr": 0.01 * (index + 1)}
        tags = {"kind": "candidate", "worker": worker, "status": "running"}
        runs[name] = tracker.start_run(name, params, tags, parent_run_id=parent_run_id)
    for step in range(STEPS):
        for index, run_id in enumerate(runs.values()):
            tracker.log_metrics(run_id, expected_metrics(worker, index, step), step=step)
    for index, run_id in enumerate(runs.values()):
        tracker.set_tags(run_id, {"status": "ok", "score": f"{expected_metrics(worker, index, STEPS - 1)['accuracy']:.4f}"})
        tracker.log_json(run_id, {"worker": worker, "index": index, "genome": ["input", "conv", "output"]}, ARTIFACT)
        tracker.end_run(run_id, ok=True)
    return {"pid": os.getpid(), "runs": runs, "transient": list(_TRANSIENT_SEEN)}


@pytest.fixture(scope="module")
def quiet_mlflow() -> Iterator[None]:
    """No artifact progress bars, no telemetry, here and in every process started from here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="module")
def pool(quiet_mlflow, booting_server) -> Iterator[ProcessPoolExecutor]:
    """Eight spawned worker processes (spawn: nothing inherited, as on macOS/Windows or with CUDA)."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    with ProcessPoolExecutor(WORKERS, mp_context=ctx, initializer=_init_worker, initargs=(barrier,)) as executor:
        # Fill the pool before the timed rounds: a task per process, held at the barrier until all eight are up.
        pids = list(executor.map(_barrier_pid, range(WORKERS), timeout=180))
        assert len(set(pids)) == WORKERS
        yield executor


def _barrier_pid(_: int) -> int:
    _BARRIER.wait(BARRIER_TIMEOUT_S)
    return os.getpid()


def run_round(pool: ProcessPoolExecutor, uri: str, artifact_root: Path) -> tuple[str, dict[str, Any]]:
    """Create the experiment and the parent run here, let the eight workers log their candidates, close the parent."""
    started = time.monotonic()
    tracker = SearchTracker(uri, EXPERIMENT, artifact_root)
    parent = tracker.start_run("search", {"workers": WORKERS}, {"kind": "search"})
    futures = [pool.submit(log_candidates, uri, str(artifact_root), parent, worker) for worker in range(WORKERS)]
    results = [f.result(timeout=240) for f in futures]
    tracker.end_run(parent, ok=True)
    assert len({r["pid"] for r in results}) == WORKERS  # really eight processes at once
    runs = {name: run_id for r in results for name, run_id in r["runs"].items()}
    transient = [msg for r in results for msg in r["transient"]]
    seconds = time.monotonic() - started
    print(f"\n{uri.split(':')[0]}: {len(runs)} runs in {seconds:.1f}s, {len(transient)} transient errors retried {transient[:5]}")
    return parent, {"runs": runs, "transient": transient}


def check_everything_arrived(uri: str, parent: str, logged: dict[str, Any], tmp: Path) -> None:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=1000
    )
    by_name = {run.info.run_name: run for run in found}
    assert len(found) == WORKERS * RUNS_PER_WORKER  # no run lost, none duplicated by a retried create
    assert {name: run.info.run_id for name, run in by_name.items()} == logged["runs"]
    assert client.get_run(parent).info.status == "FINISHED"
    for worker in range(WORKERS):
        for index in range(RUNS_PER_WORKER):
            run = by_name[f"w{worker}-c{index}"]
            run_id = run.info.run_id
            assert run.info.status == "FINISHED"
            assert run.info.end_time is not None
            assert run.data.params == {"worker": str(worker), "index": str(index), "lr": str(0.01 * (index + 1))}
            tags = run.data.tags
            assert tags["mlflow.parentRunId"] == parent
            assert tags[f"{TAG_PREFIX}kind"] == "candidate"
            assert tags[f"{TAG_PREFIX}worker"] == str(worker)
            assert tags[f"{TAG_PREFIX}status"] == "ok"
            assert tags[f"{TAG_PREFIX}score"] == f"{expected_metrics(worker, index, STEPS - 1)['accuracy']:.4f}"
            for key in ("loss", "accuracy"):
                history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
                expected = [(step, expected_metrics(worker, index, step)[key]) for step in range(STEPS)]
                assert [(m.step, m.value) for m in history] == expected, f"{run.info.run_name} {key}"
                assert run.data.metrics[key] == expected[-1][1]
            local = client.download_artifacts(run_id, ARTIFACT, str(tmp / run_id))
            assert json.loads(Path(local).read_text())["worker"] == worker
            assert json.loads(Path(local).read_text())["index"] == index


# ---- (a) the default SQLite store ------------------------------------------------------------


def test_eight_processes_log_into_one_sqlite_store_without_losing_anything(pool, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    SearchTracker(uri, EXPERIMENT, tmp_path / "artifacts")  # the schema is created once, here, not raced by workers
    parent, logged = run_round(pool, uri, tmp_path / "artifacts")
    check_everything_arrived(uri, parent, logged, tmp_path / "downloads")


# ---- (b) a real tracking server --------------------------------------------------------------


@pytest.fixture(scope="module")
def booting_server(quiet_mlflow, tmp_path_factory) -> Iterator[MlflowServer]:
    """Started first (the worker pool depends on it), so it boots while the workers spawn and the SQLite round runs."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(booting_server: MlflowServer) -> tuple[str, Path]:
    return booting_server.wait_ready(), booting_server.root


def test_eight_processes_log_through_a_tracking_server_without_losing_anything(pool, server, tmp_path):
    url, root = server
    parent, logged = run_round(pool, url, tmp_path / "unused-artifacts")  # the server decides where artifacts go
    check_everything_arrived(url, parent, logged, tmp_path / "downloads")
    artifacts = list((root / "artifacts").rglob("result.json"))
    assert len(artifacts) == WORKERS * RUNS_PER_WORKER  # proxied through the server into its artifact store
