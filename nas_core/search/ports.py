"""The protocols the search loop needs from the outside world, and the in-memory implementations the core ships.

Adapters in :mod:`nas_pipeline` implement them with MLflow, DVC and ONNX; the core never imports those tools.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nas_core.search.memory import EvaluationMemory, RunsMemory

if TYPE_CHECKING:
    from torch import nn

    from nas_core.data.preparation import PreparedData
    from nas_core.provenance import Provenance
    from nas_core.search.records import Evaluation
    from nas_core.search.summary import SearchSummary


class InfrastructureError(RuntimeError):
    """Not the candidate's fault (data store, versioning): the search stops, and can be resumed."""


class ModelExportError(RuntimeError):
    """The best model cannot be exported (rejected by a checker, or not the same model after conversion): retrying
    would fail the same way, so the search finishes and says why it has no model."""


@runtime_checkable
class Tracker(Protocol):
    """Where runs are recorded: the search's parent run and one nested run per evaluation."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str

    def spec(self) -> TrackerSpec: ...
    def start_run(
        self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any], parent_run_id: str | None = None
    ) -> str: ...
    def open_search_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> tuple[str, bool]:
        """The search's run: a new one, or one opened for this process by someone else; and whether the search owns it."""
        ...

    def reopen_run(self, run_id: str) -> None: ...
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None: ...
    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None: ...
    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None: ...
    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None: ...
    def end_run(self, run_id: str, ok: bool, status: str | None = None) -> None: ...
    def close_run(
        self,
        run_id: str,
        ok: bool,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        step: int = 0,
        status: str | None = None,
        history: Sequence[tuple[int, Mapping[str, float]]] = (),
    ) -> None:
        """A run's ``history`` (the metrics of each of its epochs), last metrics (at ``step``) and tags, then
        :meth:`end_run`: one write of them all (per store limit), not one each."""
        ...

    def log_evaluation_plots(
        self, run_id: str, genome: Any, title: str, dims: int, history: Sequence[tuple[int, Mapping[str, float]]] = ()
    ) -> None:
        """Draw an evaluation's figures and attach them to its run (a store without artifacts may do nothing); the
        search draws them once, at its end, for its best few. The learning curves are ``history`` (the metrics of each
        epoch) when the search holds it, else the run's logged per-epoch metrics."""
        ...

    def running_runs(self, search_id: str, roles: Sequence[str]) -> list[str]: ...
    def is_transient(self, exc: BaseException) -> bool: ...
    def ui_hint(self) -> str: ...
    def memory(self) -> EvaluationMemory:
        """Earlier searches of the experiment and their evaluations (warm start and reuse read them)."""
        ...


class TrackerSpec(Protocol):
    """A picklable handle a worker (thread, process or Dask) turns back into a :class:`Tracker`."""

    def connect(self) -> Tracker: ...


class DataStore(Protocol):
    """Prepares a dataset into versioned splits, and loads exactly that version back anywhere (picklable)."""

    def prepare(self, dataset: str, data_root: Path | None = None, download: bool = False) -> Any: ...
    def load(self, dataset: str, version: str) -> Any: ...


@dataclass(frozen=True)
class ExportOutcome:
    """Where the exported model went and how it was checked."""

    path: Path
    max_abs_diff: float
    samples: int  # inputs compared between ONNX and PyTorch
    registration: dict[str, Any] | None = None
    handoff_path: Path | None = None
    quantization: dict[str, Any] | None = None  # the int8 report (kept or why not), when asked for
    front: tuple[dict[str, Any], ...] = ()  # export pareto: each handed-over model (the best's entry included)


@dataclass(frozen=True)
class FrontModel:
    """A model of the accuracy/latency front handed over beside the best (``export: pareto``)."""

    model: nn.Module
    evaluation: Evaluation


@dataclass(frozen=True)
class ExportRequest:
    """The model a search hands over, and everything that is written beside it."""

    model: nn.Module
    best: Evaluation
    metrics: dict[str, float]  # of the exported model: the best's validation metrics, the final model's test metrics
    provenance: Provenance
    data: PreparedData
    output: Path
    search_run_id: str
    quantize: str = "none"  # "int8": also an int8 model, kept within max_accuracy_drop of the float one
    max_accuracy_drop: float = 0.005
    front: tuple[FrontModel, ...] | None = None  # export pareto: the chosen front members other than the best
    latency_targets: tuple[float, ...] = ()  # export pareto: the under_<X>ms aliases, in milliseconds
    latency_batch: int = 1  # how the search predicted latencies: the card and the front are measured the same way
    latency_threads: int = 1
    latency_provider: str = "CPUExecutionProvider"


class ModelExporter(Protocol):
    """Exports the search's best model (and registers and hands it over), logging to the search's run."""

    def export(self, request: ExportRequest, tracker: Tracker) -> ExportOutcome: ...


class Reporter(Protocol):
    """Draws what a finished search shows (plots, an HTML page); returns the files to attach to the search's run."""

    def report(self, summary: SearchSummary) -> list[tuple[Path, str | None]]: ...


class Observer(Protocol):
    """Follows a search as it runs (a progress bar, a log)."""

    def stage(self, name: str) -> None: ...
    def submitted(self, count: int) -> None: ...
    def recorded(self, evaluation: Evaluation) -> None: ...
    def resumed(self, evaluations: Sequence[Evaluation], killed: int) -> None: ...


class SilentObserver:
    """An observer that shows nothing."""

    def stage(self, name: str) -> None:
        pass

    def submitted(self, count: int) -> None:
        pass

    def recorded(self, evaluation: Evaluation) -> None:
        pass

    def resumed(self, evaluations: Sequence[Evaluation], killed: int) -> None:
        pass


class NoReports:
    """A reporter that draws nothing."""

    def report(self, summary: SearchSummary) -> list[tuple[Path, str | None]]:
        return []


@dataclass
class MemoryRun:
    name: str
    parent_run_id: str | None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"


class MemoryTracker:
    """Runs kept in this process's memory: for the library alone, tests and notebooks (threads share it)."""

    tracking_uri = "memory:"
    experiment_id = "0"

    def __init__(self, experiment_name: str = "nas") -> None:
        self.experiment_name = experiment_name
        self.runs: dict[str, MemoryRun] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def spec(self) -> MemoryTracker:
        return self

    def connect(self) -> MemoryTracker:
        return self

    def start_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any], parent_run_id: str | None = None) -> str:
        with self._lock:
            run_id = f"run-{next(self._ids)}"
            self.runs[run_id] = MemoryRun(name, parent_run_id)
        self.log_params(run_id, params)
        self.set_tags(run_id, tags)
        return run_id

    def open_search_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> tuple[str, bool]:
        return self.start_run(name, params, tags), True

    def reopen_run(self, run_id: str) -> None:
        self.runs[run_id].status = "RUNNING"

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.runs[run_id].params.update({k: str(v) for k, v in params.items()})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self._add_metrics(run_id, metrics, step)

    def _add_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.runs[run_id].metrics.setdefault(key, []).append((step, float(value)))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.runs[run_id].tags.update({k: str(v) for k, v in tags.items()})

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.runs[run_id].artifacts[artifact_file] = json.loads(json.dumps(data))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.runs[run_id].artifacts[f"{artifact_path}/{Path(path).name}" if artifact_path else Path(path).name] = str(path)

    def end_run(self, run_id: str, ok: bool, status: str | None = None) -> None:
        self.runs[run_id].status = status or ("FINISHED" if ok else "FAILED")

    def close_run(
        self,
        run_id: str,
        ok: bool,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, Any] | None = None,
        step: int = 0,
        status: str | None = None,
        history: Sequence[tuple[int, Mapping[str, float]]] = (),
    ) -> None:
        for epoch, values in history:
            self._add_metrics(run_id, values, epoch)
        self._add_metrics(run_id, metrics or {}, step)
        if tags:
            self.set_tags(run_id, tags)
        self.end_run(run_id, ok, status)

    def log_evaluation_plots(
        self, run_id: str, genome: Any, title: str, dims: int, history: Sequence[tuple[int, Mapping[str, float]]] = ()
    ) -> None:
        pass

    def running_runs(self, search_id: str, roles: Sequence[str]) -> list[str]:
        return [
            run_id
            for run_id, run in self.runs.items()
            if run.status == "RUNNING" and run.tags.get("search_id") == search_id and run.tags.get("role") in roles
        ]

    def is_transient(self, exc: BaseException) -> bool:
        return False

    def ui_hint(self) -> str:
        return "runs are kept in memory only (no tracking store)"

    def memory(self) -> RunsMemory:
        return RunsMemory(self)
