"""MLflow as the search's :class:`~nas_core.search.ports.Tracker`: one parent run per search, one nested run per
evaluation, every call retried while the store is busy or unreachable, for a bounded time (``tracking_timeout``)."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH, MAX_METRICS_PER_BATCH

from nas_core.provenance import TAG_PREFIX
from nas_pipeline.locks import machine_lock
from nas_pipeline.stores import (  # noqa: F401 - re-exported: the tracker's callers import them from here
    ARTIFACTS_DIR_NAME,
    DEFAULT_DB_NAME,
    TrackingUnavailable,
    check_reachable,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from nas_pipeline.mlflow_memory import MlflowMemory

T = TypeVar("T")
DEFAULT_PATIENCE = 300.0  # seconds; SearchConfig.tracking_timeout sets it for a search
# One HTTP request to a tracking server: no retries of MLflow's own (ours are bounded in time), a short timeout.
# And no "View run ... at" lines on stdout per closed run: the progress output says where the runs are.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
ARTIFACT_URIS_KEPT = 1024  # the artifact locations of the latest runs a tracker created (as MLflow caches its own)


def bound_http_requests() -> None:
    """Make each HTTP request to a tracking server fail fast (unless the user set MLflow's variables): the search's
    own retries, bounded by ``tracking_timeout``, ride out an outage; MLflow's would wait minutes inside each one.
    Child processes (candidates on processes or Dask) inherit the setting."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


@contextmanager
def store_lock(tracking_uri: str, scope: str = "store") -> Iterator[None]:
    """Serialise, among this machine's processes using ``tracking_uri``, what MLflow does not make atomic: creating a
    fresh SQLite schema and the experiment, and the registry's read-decide-write of the champion alias."""
    with machine_lock("mlflow", tracking_uri, scope):
        yield


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


# MLflow error codes that say "try again later" / "this request is wrong, retrying will not help".
_TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"})
_DETERMINISTIC_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_CONFLICT",
        "INVALID_STATE",
        "BAD_REQUEST",
        "MALFORMED_REQUEST",
        "ENDPOINT_NOT_FOUND",
        "NOT_IMPLEMENTED",
        "FEATURE_DISABLED",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "CUSTOMER_UNAUTHORIZED",
    }
)
_TRANSIENT_HTTP_STATUS = (429, 502, 503, 504)
# A store that is busy, rate limited, restarting or briefly unreachable (SQLite, Postgres/MySQL, HTTP, sockets).
_TRANSIENT_MARKERS = (
    "database is locked",
    "database table is locked",
    "database is busy",
    "sqlite_busy",
    "sqlite_locked",
    "deadlock",
    "temporarily unavailable",
    "temporarily_unavailable",
    "too many requests",
    "rate limit",
    "request_limit_exceeded",
    "service unavailable",
    "bad gateway",
    "gateway timeout",
    "gateway time-out",
    *(f"{prefix} {code}" for code in _TRANSIENT_HTTP_STATUS for prefix in ("code", "status", "http", "too many")),
    "connection refused",
    "connection reset",
    "connection aborted",
    "remotedisconnected",
    "newconnectionerror",
    "read timed out",
    "timeout exception",
    "could not connect to server",
    "server closed the connection",
    "lost connection to",
)
# SQLAlchemy reports these as OperationalError (and MLflow as TEMPORARILY_UNAVAILABLE), yet they never heal by waiting.
_DETERMINISTIC_MARKERS = ("no such table", "no such column", "unable to open database file", "readonly database", "syntax error")


def _is_transient_link(exc: BaseException) -> bool:
    """One exception of a chain, judged on its own."""
    import sqlite3

    import requests
    import sqlalchemy.exc

    if isinstance(exc, (ConnectionError, TimeoutError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, requests.exceptions.HTTPError) and status in _TRANSIENT_HTTP_STATUS:
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True  # the database dropped the connection; the pool reconnects on the next call
    message = str(exc).lower()
    if any(marker in message for marker in _DETERMINISTIC_MARKERS):
        return False
    if isinstance(exc, MlflowException) and exc.error_code in _TRANSIENT_CODES:
        return True
    if isinstance(exc, (MlflowException, sqlalchemy.exc.OperationalError, sqlite3.OperationalError)):
        return any(marker in message for marker in _TRANSIENT_MARKERS)
    return False


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking store was busy or unreachable, so the same call may succeed later.

    Transient: SQLite "database is locked"/"busy" (as ``MlflowException`` or a raw SQLAlchemy/sqlite3
    ``OperationalError``), "temporarily unavailable", rate limits and HTTP 429/502/503/504, dropped or refused
    connections and timeouts (``ConnectionError``, ``TimeoutError``, their ``requests`` counterparts), also when
    MLflow wrapped them in an ``MlflowException`` (the cause/context chain is followed). Deterministic errors
    such as ``RESOURCE_DOES_NOT_EXIST`` or ``INVALID_PARAMETER_VALUE`` are never transient, whatever their
    message says; neither is any other exception type (a plain ``OSError``, a training ``RuntimeError``).
    """
    if isinstance(exc, TrackingUnavailable) or (isinstance(exc, MlflowException) and exc.error_code in _DETERMINISTIC_CODES):
        return False  # TrackingUnavailable: already retried for the whole tracking_timeout
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 16:
        seen.add(id(link))
        if _is_transient_link(link):
            return True
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)
    return False


# Stores that stayed unreachable past their patience in this process: later calls try once, without waiting
# again (closing runs while the search stops must not take another full timeout); a call that works clears it.
_UNREACHABLE: set[str] = set()
_UNREACHABLE_LOCK = threading.Lock()


def _retry(
    call: Callable[[], T],
    patience: float = DEFAULT_PATIENCE,
    store: str | None = None,
    delay: float = 0.2,
    max_delay: float = 8.0,
) -> T:
    """Run a store call, retrying it with exponential back-off while it fails with a transient error.

    Waits ``delay * 2**n`` seconds (at most ``max_delay``) between attempts, for at most ``patience`` seconds in
    all (the attempts' own time included). Errors that are not transient (see :func:`is_transient`) are raised at
    once; a transient one still failing after ``patience`` becomes :class:`TrackingUnavailable`. With ``store`` (its
    URI), later calls to a store that already used up its patience in this process try once only.
    """
    started, waited, attempt = time.monotonic(), 0.0, 0
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            spent = max(time.monotonic() - started, waited)
            with _UNREACHABLE_LOCK:
                given_up = store in _UNREACHABLE
            if given_up or spent >= patience:
                if store is not None:
                    with _UNREACHABLE_LOCK:
                        _UNREACHABLE.add(store)
                raise TrackingUnavailable(store or "the tracking store", spent, exc) from exc
            pause = min(delay * 2**attempt, max_delay, patience - spent)
            time.sleep(pause)
            waited, attempt = waited + pause, attempt + 1
        else:
            if store in _UNREACHABLE:
                with _UNREACHABLE_LOCK:
                    _UNREACHABLE.discard(store)
            return result


def _params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


def _tags(values: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(str(k), str(v)) for k, v in values.items()]


class MlflowTracker:
    """Records a search in one MLflow experiment; safe to share between threads.

    Every call is retried while the store is busy or unreachable, for ``patience`` seconds in all (the search's
    ``tracking_timeout``); then it raises :class:`TrackingUnavailable` and the search stops, resumably.
    """

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_root: Path | None = None, patience: float = DEFAULT_PATIENCE
    ) -> None:
        bound_http_requests()
        self.tracking_uri, self.patience = tracking_uri, patience
        self._experiment_name: str | None = experiment
        self._artifact_uris: OrderedDict[str, str] = OrderedDict()
        self._artifact_uris_lock = threading.Lock()
        # Two searches starting on a fresh project would both create the SQLite schema (MLflow does not lock that)
        # and the experiment: the first one in does both, the other finds them.
        with store_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri)  # may create the store's schema at once
            found = self._retry(lambda: self.client.get_experiment_by_name(experiment))
            if found is not None:
                self.experiment_id = found.experiment_id
            else:
                local = tracking_uri.startswith(("sqlite:", "file:")) and artifact_root is not None
                location = Path(artifact_root).resolve().as_uri() if local else None
                try:
                    self.experiment_id = self._retry(
                        lambda: self.client.create_experiment(experiment, artifact_location=location)
                    )
                except MlflowException:  # another machine created it at the same moment
                    found = self._retry(lambda: self.client.get_experiment_by_name(experiment))
                    if found is None:
                        raise
                    self.experiment_id = found.experiment_id

    def _retry(self, call: Callable[[], T]) -> T:
        return _retry(call, self.patience, self.tracking_uri)

    def start_run(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        parent_run_id: str | None = None,
    ) -> str:
        """Create a run (nested under ``parent_run_id`` when given) with its params and tags; return its id."""
        run_tags = {MLFLOW_RUN_NAME: name, **{f"{TAG_PREFIX}{k}": str(v) for k, v in tags.items()}}
        if parent_run_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self._retry(lambda: self.client.create_run(self.experiment_id, tags=run_tags, run_name=name))
        with self._artifact_uris_lock:
            self._artifact_uris[run.info.run_id] = run.info.artifact_uri
            if len(self._artifact_uris) > ARTIFACT_URIS_KEPT:
                self._artifact_uris.popitem(last=False)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params in batches of 100 (MLflow's limit per call)."""
        items = _params(params)
        for i in range(0, len(items), 100):
            self._retry(lambda chunk=items[i : i + 100]: self.client.log_batch(run_id, params=chunk))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._retry(lambda: self.client.log_batch(run_id, metrics=batch))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._retry(lambda: self.client.log_batch(run_id, tags=_tags({f"{TAG_PREFIX}{k}": v for k, v in tags.items()})))

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        text = json.dumps(data, indent=2)
        repository = self._artifact_repository(run_id)
        if repository is None:  # a run this tracker did not create: MLflow fetches the run to find its artifacts
            self._retry(lambda: self.client.log_text(run_id, text, artifact_file))
            return
        folder, name = posixpath.split(posixpath.normpath(artifact_file))
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            path.write_text(text, encoding="utf-8")
            self._retry(lambda: repository.log_artifact(str(path), folder or None))

    def _artifact_repository(self, run_id: str) -> ArtifactRepository | None:
        """Where a run this tracker created keeps its artifacts, from the location ``create_run`` returned (MLflow's
        ``log_text`` would read the whole run back to learn it, per new run); None for other runs."""
        with self._artifact_uris_lock:
            uri = self._artifact_uris.get(run_id)
        if uri is None:
            return None
        located = add_databricks_profile_info_to_artifact_uri(uri, self.tracking_uri)  # as MlflowClient resolves it
        return get_artifact_repository(located, tracking_uri=self.tracking_uri)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self._retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def end_run(self, run_id: str, ok: bool, status: str | None = None) -> None:
        """Close a run as FINISHED or FAILED (or an explicit MLflow status such as KILLED)."""
        final = status or ("FINISHED" if ok else "FAILED")
        self._retry(lambda: self.client.set_terminated(run_id, final))

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
        """A run's epochs (``history``), last metrics (at ``step``) and tags in one ``log_batch`` (a candidate's are far
        below MLflow's limits: longer histories go 1,000 metrics per call, the tags with the first), then its status
        (:meth:`end_run`)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for epoch, values in history for k, v in values.items()]
        batch += [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()]
        prefixed = _tags({f"{TAG_PREFIX}{k}": v for k, v in (tags or {}).items()})
        first = MAX_ENTITIES_PER_BATCH - len(prefixed)  # a call's metrics and tags count together
        calls = [(batch[:first], prefixed)]
        calls += [(batch[i : i + MAX_METRICS_PER_BATCH], []) for i in range(first, len(batch), MAX_METRICS_PER_BATCH)]
        for chunk, chunk_tags in calls:
            if chunk or chunk_tags:
                self._retry(
                    lambda chunk=chunk, chunk_tags=chunk_tags: self.client.log_batch(run_id, metrics=chunk, tags=chunk_tags)
                )
        self.end_run(run_id, ok, status)

    @classmethod
    def attach(cls, tracking_uri: str, experiment_id: str, patience: float = DEFAULT_PATIENCE) -> MlflowTracker:
        """A tracker for an experiment that already exists (in a worker process, say)."""
        bound_http_requests()
        tracker = cls.__new__(cls)
        tracker.tracking_uri, tracker.experiment_id, tracker._experiment_name = tracking_uri, experiment_id, None
        tracker.patience = patience
        tracker._artifact_uris, tracker._artifact_uris_lock = OrderedDict(), threading.Lock()
        tracker.client = MlflowClient(tracking_uri)
        return tracker

    @property
    def experiment_name(self) -> str:
        if self._experiment_name is None:
            self._experiment_name = self._retry(lambda: self.client.get_experiment(self.experiment_id)).name
        return self._experiment_name

    def spec(self) -> MlflowTrackerSpec:
        return MlflowTrackerSpec(self.tracking_uri, self.experiment_id, self.patience)

    def open_search_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> tuple[str, bool]:
        """A new parent run, or the run ``mlflow run`` opened for this process (``MLFLOW_RUN_ID``): that command closes it.

        ``mlflow run`` has already logged the entry point's parameters as typed (``budget`` "2.0", say) and MLflow
        refuses to change a logged value, so those keep their values and only the other settings are added.
        """
        outer = outer_mlflow_run(self.tracking_uri)
        if outer is None or outer.info.experiment_id != self.experiment_id:
            return self.start_run(name, params, tags), True
        run_id = outer.info.run_id
        self.log_params(run_id, {k: v for k, v in params.items() if k not in outer.data.params})
        self._retry(lambda: self.client.update_run(run_id, name=name))
        self.set_tags(run_id, tags)
        return run_id, False

    def running_runs(self, search_id: str, roles: Sequence[str]) -> list[str]:
        """Runs of the search with one of ``roles`` still RUNNING (left by a process that died)."""
        return [
            run.info.run_id
            for role in roles
            for run in self.search_runs({"search_id": search_id, "role": role}, status="RUNNING")
        ]

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def ui_hint(self) -> str:
        return ui_command(self.tracking_uri)

    def memory(self) -> MlflowMemory:
        """Earlier searches of this experiment and their evaluations (the search's memory)."""
        from nas_pipeline.mlflow_memory import MlflowMemory

        return MlflowMemory(self)

    def log_evaluation_plots(
        self, run_id: str, genome: Any, title: str, dims: int, history: Sequence[tuple[int, Mapping[str, float]]] = ()
    ) -> None:
        """The architecture diagram and the learning curves (``history``, else read back from the run's per-epoch
        metrics) as PNGs under the run's ``plots/``, drawn in the figure process (:mod:`nas_pipeline.figure_process`);
        a plotting error is tagged, never blamed on the candidate."""
        from nas_pipeline import figure_process
        from nas_pipeline.plots import evaluation_pngs

        try:
            curves = [{"epoch": float(epoch), **values} for epoch, values in history] or self._logged_epochs(run_id)
            with tempfile.TemporaryDirectory() as folder:
                for path in figure_process.draw(evaluation_pngs, genome, curves, Path(folder), title, dims):
                    self.log_artifact(run_id, path, "plots")
        except Exception as exc:
            if is_transient(exc):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.set_tags(run_id, {"plot_error": f"error: {type(exc).__name__}: {first}"})

    def _logged_epochs(self, run_id: str) -> list[dict[str, float]]:
        """The run's per-epoch metrics as the store holds them, one dict per epoch (with ``epoch``)."""
        from nas_core.evaluation.worker import EPOCH_METRICS

        steps: dict[int, dict[str, float]] = {}
        for key in EPOCH_METRICS:
            for metric in self._retry(lambda key=key: self.client.get_metric_history(run_id, key)):
                steps.setdefault(metric.step, {"epoch": float(metric.step)})[key] = metric.value
        return [steps[step] for step in sorted(steps)]

    def reopen_run(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed search continues under its old parent run)."""
        self._retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def search_runs(self, tags: Mapping[str, str], status: str | None = None) -> list[Run]:
        """Runs of this experiment whose ``nas.`` tags have the given values (and status, when given)."""
        clauses = [f"tags.`{TAG_PREFIX}{k}` = '{v}'" for k, v in tags.items()]
        if status:
            clauses.append(f"attributes.status = '{status}'")
        query = " and ".join(clauses)
        return self._retry(lambda: list(self.client.search_runs([self.experiment_id], query, max_results=50_000)))


def outer_mlflow_run(tracking_uri: str) -> Run | None:
    """The run ``mlflow run`` opened for this process (``MLFLOW_RUN_ID``), when it is RUNNING in this store."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        run = _retry(lambda: MlflowClient(tracking_uri).get_run(run_id))
    except MlflowException:  # another store's run, or a stale variable: the search opens its own run
        return None
    return run if run.info.status == "RUNNING" else None


@dataclass(frozen=True)
class MlflowTrackerSpec:
    """A picklable handle on an experiment of a tracking store; each process connects once."""

    tracking_uri: str
    experiment_id: str
    patience: float = DEFAULT_PATIENCE

    def connect(self) -> MlflowTracker:
        return _attached(self.tracking_uri, self.experiment_id, self.patience)


@lru_cache(maxsize=8)
def _attached(tracking_uri: str, experiment_id: str, patience: float) -> MlflowTracker:
    return MlflowTracker.attach(tracking_uri, experiment_id, patience)
