"""Shared fixtures: keep Prefect offline and its state in a temporary folder; temporary git projects; a real
``mlflow server``; a Chromium binary (installed with apt-get when missing)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Before anything imports prefect: no telemetry, state out of the user's home and the repository.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="nas-tests-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # inherited by `nas` subprocesses
PREFECT_STARTUP_TIMEOUT = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])


# ---- one real Prefect server for the whole session ----------------------------------------------------------------
# A Prefect server takes 20 s and more to boot on a loaded 2-core machine, and prefect_test_harness() boots a new one
# each time with a 30 s limit: the session boots one, on first use, and every user shares it: the `prefect_server`
# fixture (its API URL, for PREFECT_API_URL of `nas` subprocesses), flows run in the test process without a harness
# (Prefect's temporary server is this same instance), and every `with shared_prefect_harness():` in a test file.


def _start_prefect_server() -> str:
    """API URL of the session's Prefect server, started at the first call (database in a temporary folder)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    server = SubprocessASGIServer()  # the instance Prefect's temporary-server mode uses in this process
    if not server.running:
        database = Path(tempfile.mkdtemp(prefix="nas-tests-prefect-db-")) / "prefect.db"
        with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{database}"}):
            server.start(timeout=PREFECT_STARTUP_TIMEOUT)  # stopped at exit (Prefect registers that itself)
    return server.api_url


@contextlib.contextmanager
def shared_prefect_harness(server_startup_timeout: int | None = None) -> Iterator[None]:
    """``prefect_test_harness()`` on the session's server: flows in the block report to it; nothing boots twice."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: _start_prefect_server()}):
        yield


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """API URL of the session's Prefect server; pass it as PREFECT_API_URL to `nas` subprocesses."""
    return _start_prefect_server()


def make_project(root: Path) -> Path:
    """A fresh git repository carrying the project's .gitignore, like a new clone."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.email", "tests@nas.local"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "tests"], cwd=root, check=True)
    shutil.copy(REPO_ROOT / ".gitignore", root / ".gitignore")
    return root


def git_status(root: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary git project with no MLflow override: the default SQLite store lands inside it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return make_project(tmp_path / "project")


def search_directly(project: Path, search_id: str = "direct", **settings):
    """A whole search run by the library's own loop (no Prefect), wired to MLflow, DVC and ONNX like `nas search`."""
    from nas_core.config import SearchConfig
    from nas_pipeline.pipeline import build_search

    search = build_search(SearchConfig(**{"project_dir": project, "output": project / "out", **settings}), search_id=search_id)
    search.run()
    return search


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The real digits splits, prepared once for the session."""
    from nas_core.data.preparation import load_prepared, prepare_dataset

    root = tmp_path_factory.mktemp("digits-data")
    prepare_dataset("digits", root)
    return load_prepared(root, "digits")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one thread avoids oversubscribing a small shared CPU; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Flaky:
    """Raises the given exceptions in turn, then returns 'done'; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Waits of nas_pipeline.mlflow_tracking's retries, recorded instead of slept."""
    from nas_pipeline import mlflow_tracking as tracking

    waited: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", waited.append)
    return waited


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    from flows.temporary_server import free_local_port

    return free_local_port()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class MlflowServer:
    """``mlflow server`` on a SQLite backend, artifacts proxied into ``root/artifacts``; boots in the background."""

    def __init__(self, root: Path) -> None:
        self.root, self.log = root, root / "server.log"
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.problems: list[str] = []

    def start(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.root}/server.db",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
            "--workers", "1",
        ]  # fmt: skip
        # No GenAI job runner and its seven huey consumer processes: nothing here needs them.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_ready(self, timeout: float = 90, attempts: int = 3) -> str:
        """The server's URL once ``/health`` answers; a server that died (port taken meanwhile, say) is restarted."""
        for attempt in range(attempts):
            assert self.process is not None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                if _healthy(self.url):
                    return self.url
                time.sleep(0.3)
            self.problems.append(f"{self.url}: exit code {self.process.poll()}")
            self.stop()
            if attempt < attempts - 1:
                self.start()
        tail = self.log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"mlflow server did not come up ({'; '.join(self.problems)}):\n{tail}")

    def stop(self) -> None:
        """Stop the server and everything it started (uvicorn's worker): its whole process group."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left of the group
        self.process.wait(10)
        self.process = None


CHROMIUM_NAMES = ("chromium", "chromium-browser")


def _which_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def apt_install(package: str) -> str:
    """Install a Debian package (as root, with apt-get); '' when it succeeded, else why it could not."""
    apt = shutil.which("apt-get")
    if apt is None:
        return "apt-get is not available"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "installing it with apt-get needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}  # English messages, matched below
    install = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0 and ("Unable to locate package" in done.stderr or "no installation candidate" in done.stderr):
            subprocess.run([apt, "update", "-q"], env=env, capture_output=True, text=True, timeout=600)  # no package lists yet
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        return f"'{' '.join(map(str, exc.cmd))}' timed out"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return f"'apt-get install {package}' failed: {([line for line in lines if line.startswith('E:')] or lines)[-1]}"
    return ""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of a Chromium binary; Debian's ``chromium`` package is installed (as root, with apt-get) when missing."""
    binary = _which_chromium()
    why = "" if binary else apt_install("chromium")
    binary = binary or _which_chromium()
    if binary is None:
        why = why or "not on PATH after apt-get"
        pytest.skip(f"Chromium is not installed and could not be installed ({why}); install it: apt-get install chromium")
    try:
        subprocess.run([binary, "--version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"Chromium at {binary} does not start ({type(exc).__name__}); install it: apt-get install chromium")
    return binary
