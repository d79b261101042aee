"""The project's long-lived local services, on 127.0.0.1: a Prefect server, an MLflow tracking server, and a
search worker (a Prefect task worker that has imported and warmed up what a search needs, see
:mod:`flows.search_worker`).

``nas up`` starts them in the background: their own process groups, each with a log file, recorded with their
URLs in ``<project>/.nas/stack.json``. It then waits until each one answers its health check (the worker answers
once it is warm). ``nas status`` reads that file and asks each service. ``nas down`` stops exactly the process
groups ``nas up`` started. While they run, ``nas search`` in the project uses them (:func:`running_urls`), unless
``PREFECT_API_URL`` or ``MLFLOW_TRACKING_URI`` say otherwise, and hands itself to the worker when it is free
(:func:`free_search_worker`).

Only the standard library is imported here, so these commands answer at once. The servers themselves are
Prefect's and MLflow's own commands; the worker is :mod:`flows.search_worker`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

STACK_DIR = Path(".nas")
STACK_FILE = "stack.json"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_WORKER_PORT = 4300
TASK_STORAGE = "task-storage"  # under STACK_DIR: where the search worker's task runs keep parameters and results
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 2.0
START_TIMEOUT_S = 180.0  # a Prefect server takes 20 s and more to boot on a loaded 2-core machine
STOP_TIMEOUT_S = 20.0
STOPPED, NOT_RUNNING = "stopped", "was not running"  # how `nas down` found a service


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where its log is."""


@dataclass(frozen=True)
class Service:
    """One running service: what ``nas up`` started and where it answers."""

    name: str  # "prefect", "mlflow" or "searches" (the search worker)
    url: str  # http://127.0.0.1:PORT
    health: str  # the path that answers 200 when the service is up
    pid: int  # its process group
    log: str

    @property
    def api_url(self) -> str:
        """What clients are given: Prefect's API under /api, MLflow's server itself."""
        return f"{self.url}/api" if self.name == "prefect" else self.url

    def answers(self, timeout: float = HEALTH_TIMEOUT_S) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health, timeout=timeout) as response:  # noqa: S310 - loopback
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


def stack_file(project_dir: Path) -> Path:
    return Path(project_dir).resolve() / STACK_DIR / STACK_FILE


def read_stack(project_dir: Path) -> list[Service]:
    """The services ``nas up`` recorded for this project (none when it has not run, or after ``nas down``)."""
    path = stack_file(project_dir)
    try:
        return [Service(**entry) for entry in json.loads(path.read_text())["services"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is damaged ({type(exc).__name__}); stop the servers by hand and delete it") from None


def running_urls(project_dir: Path) -> dict[str, str]:
    """``{"prefect": api url, "mlflow": tracking uri, "searches": worker url}`` of this project's services that
    answer now."""
    try:
        return {s.name: s.api_url for s in read_stack(project_dir) if s.answers()}
    except StackError:
        return {}


def task_storage(project_dir: Path) -> Path:
    """Where a search handed to the worker and the worker keep its task run's parameters and result: the same
    folder for both, whatever their PREFECT_HOME."""
    return Path(project_dir).resolve() / STACK_DIR / TASK_STORAGE


def free_search_worker(project_dir: Path) -> str | None:
    """The URL of this project's search worker when it answers and has room for a search now, else None."""
    try:
        worker = next((s for s in read_stack(project_dir) if s.name == "searches"), None)
    except StackError:
        return None
    status = worker_status(worker.url) if worker else None
    return worker.url if status and not status.get("stopping") and (status.get("available") or 0) > 0 else None


def worker_status(url: str, timeout: float = HEALTH_TIMEOUT_S) -> dict | None:
    """What a search worker's /status says (its tasks, how many searches it has room for); None when it does not
    answer."""
    try:
        with urllib.request.urlopen(url + HEALTH["searches"], timeout=timeout) as response:  # noqa: S310 - loopback
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _commands(project_dir: Path, backend_store: str | None, artifacts: Path) -> dict[str, list[str]]:
    """The services' command lines. On the project's own SQLite store, new experiments keep their artifacts in the
    project's folder as plain file locations (as searches without the server do), so the project's searches work
    the same after ``nas down``; on another store (a team's database) the server serves the artifacts itself."""
    bin_dir = Path(sys.executable).parent
    backend = backend_store or f"sqlite:///{project_dir / 'mlflow.db'}"
    where = (
        ["--artifacts-destination", str(artifacts)]
        if backend_store
        else ["--no-serve-artifacts", "--default-artifact-root", artifacts.resolve().as_uri()]
    )
    return {
        "prefect": [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", "{port}"],
        "mlflow": [
            sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", "{port}", "--workers", "2",
            "--backend-store-uri", backend, *where,
        ],
        "searches": [sys.executable, "-m", "flows.search_worker", "--port", "{port}", "--project-dir", str(project_dir)],
    }  # fmt: skip


HEALTH = {"prefect": "/api/health", "mlflow": "/health", "searches": "/status"}


def _environment(project_dir: Path) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.setdefault("PREFECT_HOME", str(project_dir / ".prefect"))  # the server's database stays in the project
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):  # the servers are the API, not clients of another one
        env.pop(key, None)
    return env


def _service_environment(name: str, project_dir: Path, port: int, running: dict[str, Service]) -> dict[str, str]:
    env = _environment(project_dir)
    if name == "prefect":  # the UI asks the API where these say (else it looks on port 4200)
        env |= {"PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_UI_API_URL": f"http://{HOST}:{port}/api"}  # fmt: skip
    if name == "searches":  # a client of the two servers, started once they answer
        env |= {"PREFECT_API_URL": running["prefect"].api_url, "MLFLOW_TRACKING_URI": running["mlflow"].api_url,
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(task_storage(project_dir)),
                # its search task runs outside any flow run: Prefect would warn in its log at every search that the
                # task's own log lines (they stay in the worker's log) are not sent to the API
                "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}  # fmt: skip
    return env


def up(
    project_dir: Path, prefect_port: int = DEFAULT_PREFECT_PORT, mlflow_port: int = DEFAULT_MLFLOW_PORT,
    backend_store: str | None = None, timeout: float = START_TIMEOUT_S, worker_port: int = DEFAULT_WORKER_PORT,
) -> list[Service]:  # fmt: skip
    """Start the services not yet running, wait until each answers, record them; the running services.

    The servers start together; the search worker after them, as their client."""
    project_dir = Path(project_dir).resolve()
    folder = stack_file(project_dir).parent
    folder.mkdir(parents=True, exist_ok=True)
    running = {s.name: s for s in read_stack(project_dir) if s.answers()}
    commands = _commands(project_dir, backend_store, project_dir / "mlartifacts")
    ports = {"prefect": prefect_port, "mlflow": mlflow_port, "searches": worker_port}
    started: list[Service] = []
    try:
        for phase in (("prefect", "mlflow"), ("searches",)):
            starting: list[tuple[Service, subprocess.Popen]] = []
            for name in phase:
                if name in running:
                    continue
                log = folder / f"{name}.log"
                with log.open("ab") as out:
                    process = subprocess.Popen(
                        [part.replace("{port}", str(ports[name])) for part in commands[name]], cwd=project_dir,
                        env=_service_environment(name, project_dir, ports[name], running), stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True,
                    )  # fmt: skip
                service = Service(name, f"http://{HOST}:{ports[name]}", HEALTH[name], process.pid, str(log))
                starting.append((service, process))
                started.append(service)
            for service, process in starting:
                _wait_until_up(service, process, timeout)
                running[service.name] = service
    except StackError:
        for service in started:
            _stop(service)
        raise
    services = [running[name] for name in commands if name in running]
    _write(project_dir, services)
    return services


def _wait_until_up(service: Service, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.answers():
            return
        if process.poll() is not None:
            raise StackError(f"the {service.name} service exited with code {process.returncode}; see {service.log}")
        time.sleep(0.5)
    raise StackError(f"the {service.name} service did not answer {service.url} within {timeout:.0f} s; see {service.log}")


def _write(project_dir: Path, services: list[Service]) -> None:
    path = stack_file(project_dir)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"services": [asdict(s) for s in services]}, indent=2))
    partial.replace(path)


def _stop(service: Service) -> str:
    """Stop a service's process group: SIGTERM, then SIGKILL if it is still there after ``STOP_TIMEOUT_S``; what
    happened, in words."""
    try:
        os.killpg(service.pid, signal.SIGTERM)
    except ProcessLookupError:
        return NOT_RUNNING
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(service.pid, 0)
        except ProcessLookupError:
            return STOPPED
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.pid, signal.SIGKILL)
    return f"killed (still running {STOP_TIMEOUT_S:g} s after SIGTERM)"


def down(project_dir: Path) -> list[tuple[Service, str]]:
    """Stop what ``nas up`` started for this project; each service and how it stopped (:func:`_stop`)."""
    services = list(reversed(read_stack(project_dir)))  # the worker, a client of both servers, first
    clients = [service for service in services if service.name == "searches"]
    servers = [service for service in services if service.name != "searches"]
    stopped = [(service, _stop(service)) for service in clients]
    if servers:  # then both servers at once: neither needs the other, and each takes seconds to shut down
        with ThreadPoolExecutor(len(servers)) as pool:
            stopped += zip(servers, pool.map(_stop, servers), strict=True)
    stack_file(project_dir).unlink(missing_ok=True)
    return stopped
