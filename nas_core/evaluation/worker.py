"""One evaluation as a self-contained job: it runs in a thread, another process or a Dask worker.

An :class:`~nas_core.search.records.EvaluationRequest` is plain, picklable data. :func:`evaluate` leases a device,
opens the evaluation's nested run through the request's tracker (tagged with that device) while it loads the (cached,
version-checked) data from the request's data store and trains or looks the genome up in a table, and returns an
:class:`~nas_core.search.records.EvaluationResult` with the per-epoch metrics: the search logs them when it closes the
run (in the same call as the final metrics: a running candidate shows no curve yet).
It never raises for a bad candidate (divergence, out of memory, timeout, a broken genome): those come back as
``failed`` with the reason. It raises only for infrastructure errors (tracking store unreachable, data not matching
its version), which the orchestrator may retry. The run is left open: the search closes it once the result is
checkpointed, so a crash in between leaves a RUNNING run that a resume marks as killed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from nas_core.data.preparation import PreparedData
from nas_core.evaluation.devices import shared_leases, visible_devices
from nas_core.evaluation.evaluators import Evaluator, create_evaluator
from nas_core.evaluation.training import TrainState, train_genome
from nas_core.search.ports import DataStore, InfrastructureError, Tracker
from nas_core.search.records import SKIPPED, EvaluationRequest, EvaluationResult
from nas_core.search.setup import threads_per_candidate
from nas_core.spaces import SearchSpace, create_space

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_f1")

_DATA: dict[tuple[Any, str, str], PreparedData] = {}
_DATA_LOCK = threading.Lock()


def load_data(store: DataStore, dataset: str, version: str) -> PreparedData:
    """The prepared splits, loaded once per process and only if they are the expected dataset version."""
    key = (store, dataset, version)
    with _DATA_LOCK:
        if key not in _DATA:
            _DATA[key] = store.load(dataset, version)
        return _DATA[key]


def remember_data(store: DataStore, dataset: str, version: str, data: PreparedData) -> None:
    """Seed this process's data cache (the search process has already loaded and checked the data)."""
    with _DATA_LOCK:
        _DATA[(store, dataset, version)] = data


@lru_cache(maxsize=8)
def _space(name: str, options_json: str, hparams_json: str) -> SearchSpace:
    return create_space(name, hparams=json.loads(hparams_json), **json.loads(options_json))


@lru_cache(maxsize=4)
def _table(path: str, select: str, report: str) -> Evaluator:
    return create_evaluator("table", path=Path(path), select=select, report=report)


def space_of(request: EvaluationRequest) -> SearchSpace:
    """The request's search space (cached per process)."""
    return _space(request.space, json.dumps(request.space_options, sort_keys=True), json.dumps(request.hparams, sort_keys=True))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def failure_reason(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"error: {type(exc).__name__}: {first}"


def evaluate(request: EvaluationRequest) -> EvaluationResult:
    """Evaluate one request under its own nested run (left open for the search to close).

    A request whose deadline has passed is not started: it comes back ``skipped``, with no run. A training request
    waits for its device before its run opens, so the run is created with its ``device`` tag (one write less). The
    run is opened (created, its params and genome written) in a thread while the candidate trains: those round trips
    to the store cost the candidate no time.
    """
    if request.deadline is not None and time.time() >= request.deadline:
        return EvaluationResult(request.index, "", SKIPPED, reason="the search's time was up before it started")
    began = time.monotonic()
    if request.threads:
        torch.set_num_threads(request.threads)
    tracker = request.tracker.connect()
    worker = worker_name()
    with contextlib.ExitStack() as lease, ThreadPoolExecutor(1, thread_name_prefix="nas-run-opener") as opener:
        try:
            device, unusable = _lease_device(request, lease), None
        except Exception as exc:  # this worker lacks the devices asked for (a remote one, say): the candidate fails
            device, unusable = None, exc
        tags = {**request.run_tags, "worker": worker, "status": "running", **({"device": device} if device else {})}
        opening = opener.submit(_open_run, tracker, request, tags)
        result = EvaluationResult(request.index, "", "failed", worker=worker)
        try:
            if unusable is not None:
                raise unusable
            space = space_of(request)
            if request.table is not None:
                result = replace(result, status="ok", metrics=_table(*request.table).evaluate(space, request.planned.genome))
            else:
                result = _train(request, space, replace(result, device=device), release=lease.close)
                result = replace(result, metrics={**result.metrics, "wall_seconds": time.monotonic() - began})
        except Exception as exc:
            if tracker.is_transient(exc) or isinstance(exc, InfrastructureError):
                raise  # not the candidate's fault: the search retries or stops (and can be resumed)
            result = replace(result, status="failed", reason=failure_reason(exc), weights=None, state=None)
        # the store's own error (a run it could not create) is raised here again, never blamed on the candidate
        return replace(result, run_id=opening.result())


def _open_run(tracker: Tracker, request: EvaluationRequest, tags: dict[str, Any]) -> str:
    """Create the evaluation's run with its params and tags, and write its genome (and proxy score); its id."""
    run_id = tracker.start_run(request.run_name, request.run_params, tags, parent_run_id=request.parent_run_id)
    tracker.log_json(run_id, request.planned.genome.to_dict(), "genome.json")
    if request.proxy is not None:
        tracker.log_metrics(run_id, {f"proxy_{request.proxy[0]}": request.proxy[1]})
    return run_id


def _lease_device(request: EvaluationRequest, lease: contextlib.ExitStack) -> str | None:
    """A slot on the least-loaded of the request's devices, held until ``lease`` closes; None for a table lookup."""
    if request.table is not None:
        return None
    devices = tuple(visible_devices(request.devices))
    leases = shared_leases(devices, None if devices == ("cpu",) else request.per_device)
    return lease.enter_context(leases.lease())


def _train(
    request: EvaluationRequest, space: SearchSpace, result: EvaluationResult, release: Callable[[], None]
) -> EvaluationResult:
    """Train on ``result.device`` (leased); ``release`` frees it once the model is gone."""
    data = load_data(request.data, request.dataset, request.dataset_version)
    start = TrainState.from_dict(torch.load(request.start_checkpoint, weights_only=True)) if request.start_checkpoint else None
    train = replace(request.train, device=result.device)
    trained = train_genome(request.planned.genome, data, train, build=space.build, start=start, keep_state=request.keep_state)
    result = replace(
        result,
        timing={"train_started": trained.started_at, "train_ended": trained.started_at + trained.train_seconds},
        status=trained.status,
        reason=trained.reason,
        metrics=trained.metrics(),
        # .cpu() copies from a device; on the CPU the model is dropped below, so its tensors need no copy
        weights={k: v.detach().cpu() for k, v in trained.model.state_dict().items()} if trained.model else None,
        state=trained.state.to_dict() if trained.state is not None else None,
        curve=tuple(m.val_accuracy for m in trained.history),
        # a promoted run's earlier epochs too: its run shows the whole learning curve
        epochs=tuple((m.epoch, _finite_metrics(m)) for m in trained.history),
    )
    del trained  # the model goes before the lease frees the device's memory
    release()
    return result


def _finite_metrics(epoch: Any) -> dict[str, float]:
    """An epoch's metrics without the NaNs (no validation when the validation split is trained on)."""
    values = {k: getattr(epoch, k) for k in EPOCH_METRICS}
    return {k: v for k, v in values.items() if math.isfinite(v)}


def set_torch_threads(workers: int) -> int:
    """Give each parallel candidate its share of the cores (no oversubscription)."""
    threads = threads_per_candidate(workers)
    torch.set_num_threads(threads)
    return threads
