"""Many candidates finishing at once: no metric is lost and no candidate fails because the store is busy.

Eight worker processes log into one experiment at the same moment, first through the default SQLite store,
then through a real ``mlflow server``; afterwards every run, metric step, tag and artifact must be there.
The retry policy itself (``is_transient``/``_retry``) is unit-tested in tests/nas_pipeline/test_mlflow_tracking_retry.py.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from nas_pipeline import mlflow_tracking as tracking
from nas_pipeline.mlflow_tracking import TAG_PREFIX, MlflowTracker
from tests.conftest import MlflowServer

EXPERIMENT = "concurrency"
WORKERS = 8
RUNS_PER_WORKER = 5
STEPS = 10
ARTIFACT = "result/result.json"
BARRIER_TIMEOUT_S = 90


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
    tracker = MlflowTracker(uri, EXPERIMENT, Path(artifact_root))
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
    with worker_pool() as executor:
        yield executor


@contextlib.contextmanager
def worker_pool() -> Iterator[ProcessPoolExecutor]:
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
    tracker = MlflowTracker(uri, EXPERIMENT, artifact_root)
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
    MlflowTracker(uri, EXPERIMENT, tmp_path / "artifacts")  # the schema is created once, here, not raced by workers
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
