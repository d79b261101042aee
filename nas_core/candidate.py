"""One candidate's evaluation as a self-contained job: it runs in a thread, another process or a Dask worker.

A :class:`CandidateJob` is plain, picklable data. :func:`run_candidate` opens the candidate's nested MLflow
run, leases a device, loads the (cached, version-checked) data, trains or looks the genome up in a table,
logs the per-epoch metrics and returns a :class:`CandidateOutcome`. It never raises for a bad candidate
(divergence, out of memory, timeout, a broken genome): those come back as ``failed`` with the reason. It
raises only for infrastructure errors (tracking store unreachable, data not matching its version), which
the orchestrator may retry. The run is left open: the search closes it once the outcome is checkpointed,
so a crash in between leaves a RUNNING run that a resume marks as killed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from nas_core import versioning
from nas_core.data import PreparedData, load_prepared
from nas_core.devices import shared_leases, visible_devices
from nas_core.evaluators import TableEvaluator
from nas_core.genome import Genome
from nas_core.spaces import SearchSpace, create_space
from nas_core.tracking import SearchTracker, is_transient
from nas_core.training import TrainConfig, TrainState, train_genome

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_f1")


@dataclass(frozen=True)
class CandidateJob:
    """Everything needed to evaluate one proposal, anywhere."""

    search_id: str
    index: int
    generation: int
    genome: dict[str, Any]
    hash: str
    origin: str
    parents: tuple[str, ...]
    run_name: str
    run_params: dict[str, Any]
    run_tags: dict[str, Any]
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    project_dir: str
    dataset: str
    dataset_version: str
    space: str
    space_options: dict[str, Any]
    hparams: dict[str, list[Any]] | None
    train: TrainConfig
    table: tuple[str, str, str] | None = None  # (path, select metric, report metric) for table lookups
    devices: str = "auto"  # which devices this worker may lease: "auto", "cpu", "cuda", "0,1", ...
    per_device: int = 1  # candidates sharing one GPU at once
    threads: int | None = None  # torch threads for this candidate (its share of the cores)
    start_checkpoint: str | None = None  # multi-fidelity: continue from this saved training state
    keep_state: bool = False  # multi-fidelity: return the training state, to continue it if promoted
    proxy: tuple[str, float] | None = None  # the zero-cost proxy's name and score, logged on the run

    @property
    def fidelity(self) -> int:
        return self.train.epochs


@dataclass
class CandidateOutcome:
    """How a job ended. ``weights`` (CPU tensors) come back only for a trained, successful candidate."""

    index: int
    run_id: str
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None
    worker: str = ""
    device: str = ""
    state: dict[str, Any] | None = None  # training state (TrainState.to_dict) when the job asked to keep it
    timing: dict[str, float] = field(default_factory=dict)  # train_started/train_ended: unix time around training
    curve: list[float] = field(default_factory=list)  # validation accuracy per epoch (for early stopping)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_DATA: dict[tuple[str, str, str], PreparedData] = {}
_DATA_LOCK = threading.Lock()


def remember_data(project_dir: Path, dataset: str, version: str, data: PreparedData) -> None:
    """Seed this process's data cache (the search process has already loaded and checked the data)."""
    with _DATA_LOCK:
        _DATA[(str(Path(project_dir).resolve()), dataset, version)] = data


def load_data(project_dir: Path, dataset: str, version: str) -> PreparedData:
    """The prepared splits, loaded once per process and only if they are the expected dataset version."""
    key = (str(Path(project_dir).resolve()), dataset, version)
    with _DATA_LOCK:
        if key not in _DATA:
            root = Path(key[0])
            found = versioning.tracked_version(root)
            if found != version:
                raise versioning.DataIntegrityError(
                    f"{root / versioning.DVC_FILE} records data version {found}, the search uses {version}; "
                    f"run `dvc checkout {versioning.DVC_FILE}` at the search's commit (or `dvc pull`) on this machine"
                )
            versioning.check_data(root)
            _DATA[key] = load_prepared(root / versioning.DATA_DIR, dataset)
        return _DATA[key]


@lru_cache(maxsize=8)
def _space(name: str, options_json: str, hparams_json: str) -> SearchSpace:
    return create_space(name, hparams=json.loads(hparams_json), **json.loads(options_json))


@lru_cache(maxsize=4)
def _table(path: str, select: str, report: str) -> TableEvaluator:
    return TableEvaluator.load(Path(path), select, report)


@lru_cache(maxsize=8)
def _tracker(tracking_uri: str, experiment_id: str) -> SearchTracker:
    return SearchTracker.attach(tracking_uri, experiment_id)


def space_of(job: CandidateJob) -> SearchSpace:
    """The job's search space (cached per process)."""
    return _space(job.space, json.dumps(job.space_options, sort_keys=True), json.dumps(job.hparams, sort_keys=True))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def failure_reason(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"error: {type(exc).__name__}: {first}"


def run_candidate(job: CandidateJob) -> CandidateOutcome:
    """Evaluate one job under its own nested MLflow run (left open for the search to close)."""
    began = time.monotonic()
    if job.threads:
        torch.set_num_threads(job.threads)
    tracker = _tracker(job.tracking_uri, job.experiment_id)
    outcome = CandidateOutcome(job.index, "", "failed", worker=worker_name())
    tags = {**job.run_tags, "worker": outcome.worker, "status": "running"}
    outcome.run_id = tracker.start_run(job.run_name, job.run_params, tags, parent_run_id=job.parent_run_id)
    tracker.log_json(outcome.run_id, job.genome, "genome.json")
    if job.proxy is not None:
        tracker.log_metrics(outcome.run_id, {f"proxy_{job.proxy[0]}": job.proxy[1]})
    genome = Genome.from_dict(job.genome)
    try:
        space = space_of(job)
        if job.table is not None:
            outcome.status, outcome.metrics = "ok", _table(*job.table).evaluate(space, genome)
        else:
            _train(job, genome, space, tracker, outcome)
            outcome.metrics["wall_seconds"] = time.monotonic() - began  # the whole job: tracking, data, training, plots
    except Exception as exc:
        if is_transient(exc) or isinstance(exc, versioning.VersioningError):
            raise  # not the candidate's fault: the search retries or stops (and can be resumed)
        outcome.status, outcome.reason, outcome.weights = "failed", failure_reason(exc), None
    return outcome


def _train(job: CandidateJob, genome: Genome, space: SearchSpace, tracker: SearchTracker, outcome: CandidateOutcome) -> None:
    data = load_data(Path(job.project_dir), job.dataset, job.dataset_version)
    devices = tuple(visible_devices(job.devices))
    leases = shared_leases(devices, None if devices == ("cpu",) else job.per_device)
    run_id = outcome.run_id

    def log_epoch(m: Any) -> None:
        values = {k: getattr(m, k) for k in EPOCH_METRICS}
        tracker.log_metrics(run_id, {k: v for k, v in values.items() if math.isfinite(v)}, step=m.epoch)

    start = TrainState.from_dict(torch.load(job.start_checkpoint, weights_only=True)) if job.start_checkpoint else None
    for earlier in start.history if start else ():  # the promoted run shows the whole learning curve
        log_epoch(earlier)
    with leases.lease() as device:
        outcome.device = device
        tracker.set_tags(run_id, {"device": device})
        train = dataclasses.replace(job.train, device=device)
        result = train_genome(genome, data, train, on_epoch=log_epoch, build=space.build, start=start, keep_state=job.keep_state)
        outcome.timing = {"train_started": result.started_at, "train_ended": result.started_at + result.train_seconds}
        outcome.status, outcome.reason, outcome.metrics = result.status, result.reason, result.metrics()
        if result.model is not None:
            outcome.weights = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
        if result.state is not None:
            outcome.state = result.state.to_dict()
        outcome.curve = [m.val_accuracy for m in result.history]
        if result.stopped_at:
            tracker.set_tags(run_id, {"early_stopped": result.stopped_at})
        history = [dataclasses.asdict(m) for m in result.history]
        del result  # the model goes before the lease frees the device's memory
    log_plots(tracker, run_id, genome, history, job.run_name, dims=int(getattr(type(space), "input_ndim", 2)))


def log_plots(
    tracker: SearchTracker, run_id: str, genome: Genome, history: list[dict[str, float]], title: str, dims: int = 2
) -> None:
    """The architecture diagram and the learning curves as PNGs under the run's ``plots/``; a plotting error is tagged,
    never blamed on the candidate."""
    from nas_core.plots import architecture_png, learning_curves_png

    try:
        with tempfile.TemporaryDirectory() as folder:
            paths = [architecture_png(genome, Path(folder) / "architecture.png", title, dims=dims)]
            if history:
                paths.append(learning_curves_png(history, Path(folder) / "learning_curves.png", title))
            for path in paths:
                tracker.log_artifact(run_id, path, "plots")
    except Exception as exc:
        if is_transient(exc):
            raise
        tracker.set_tags(run_id, {"plot_error": failure_reason(exc)})
