"""Which of `nas up`'s services a search uses: the search worker only when it answers and has room. The services here
are small HTTP servers answering as the worker's status app does; tests/e2e/test_stack.py runs the real ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows import stack
from flows.stack import Service, free_search_worker, running_urls


class _Status(BaseHTTPRequestHandler):
    answer: dict = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(self.answer).encode()
        self.send_response(200 if self.path == "/status" else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def worker_status() -> Iterator[tuple[str, type[_Status]]]:
    """A loopback HTTP server whose /status answers what the test sets."""
    handler = type("Status", (_Status,), {"answer": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _record(project, url: str) -> None:
    stack.stack_file(project).parent.mkdir(parents=True)
    stack._write(project, [Service("searches", url, "/status", os.getpid(), "searches.log")])


def test_a_free_worker_is_used_and_a_busy_or_stopping_one_is_not(tmp_path, worker_status):
    url, handler = worker_status
    _record(tmp_path, url)
    handler.answer = {"stopping": False, "available": 1, "current": 0}
    assert free_search_worker(tmp_path) == url
    assert running_urls(tmp_path) == {"searches": url}
    handler.answer = {"stopping": False, "available": 0, "current": 1}
    assert free_search_worker(tmp_path) is None
    handler.answer = {"stopping": True, "available": 1, "current": 0}
    assert free_search_worker(tmp_path) is None


def test_no_worker_when_none_was_started_or_it_does_not_answer(tmp_path, worker_status):
    assert free_search_worker(tmp_path) is None  # no stack.json
    _record(tmp_path, "http://127.0.0.1:9")  # nobody listens on the discard port
    assert free_search_worker(tmp_path) is None
    stack.stack_file(tmp_path).write_text("{damaged")
    assert free_search_worker(tmp_path) is None


def test_the_worker_starts_after_the_servers_as_their_client(tmp_path):
    running = {
        "prefect": Service("prefect", "http://127.0.0.1:1", "/api/health", 1, "p.log"),
        "mlflow": Service("mlflow", "http://127.0.0.1:2", "/health", 2, "m.log"),
    }
    env = stack._service_environment("searches", tmp_path, 3, running)
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:1/api" and env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:2"
    assert env["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(stack.task_storage(tmp_path))
    assert env["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] == "ignore", "no warning in its log at every search"
    servers = stack._service_environment("mlflow", tmp_path, 2, running)
    assert "PREFECT_API_URL" not in servers and "MLFLOW_TRACKING_URI" not in servers
    assert list(stack._commands(tmp_path, None, tmp_path / "a")) == ["prefect", "mlflow", "searches"]


def _service(tmp_path, *command: str) -> tuple[Service, subprocess.Popen]:
    """A process group as `nas up` starts them, started once it has printed its first line (it is ready)."""
    proc = subprocess.Popen(list(command), start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped as soon as it ends (`nas up` has exited: init)
    return Service("probe", "http://127.0.0.1:1", "/", proc.pid, str(tmp_path / "log")), proc


def test_down_says_whether_sigterm_stopped_a_service_or_it_had_to_be_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(stack, "STOP_TIMEOUT_S", 1.0)
    service, proc = _service(tmp_path, "sh", "-c", "echo ready; exec sleep 60")
    assert stack._stop(service) == stack.STOPPED
    assert proc.wait(timeout=30) == -signal.SIGTERM
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    service, proc = _service(tmp_path, sys.executable, "-c", ignoring)
    assert stack._stop(service) == "killed (still running 1 s after SIGTERM)"
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert stack._stop(service) == stack.NOT_RUNNING


# A service that, on SIGTERM, notes whether the worker had gone already and waits (10 s at most) for its peer's SIGTERM.
_STOPPING = """
import os, signal, sys, time
name, folder, peer = sys.argv[1:]
def note(what, value):
    with open(os.path.join(folder, name + what), "w") as out:
        out.write(str(value))
def stop(*_):
    note(".worker_gone", os.path.exists(os.path.join(folder, "searches.gone")))
    deadline = time.monotonic() + 10
    while peer != "-" and not os.path.exists(os.path.join(folder, peer + ".worker_gone")) and time.monotonic() < deadline:
        time.sleep(0.02)
    note(".gone", peer == "-" or os.path.exists(os.path.join(folder, peer + ".worker_gone")))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""


def test_down_stops_the_worker_first_then_both_servers_together(tmp_path):
    project, notes = tmp_path / "project", tmp_path / "notes"
    notes.mkdir()
    peers = {"prefect": "mlflow", "mlflow": "prefect", "searches": "-"}  # in the order `nas up` starts them
    services = [
        replace(_service(tmp_path, sys.executable, "-c", _STOPPING, name, str(notes), peer)[0], name=name)
        for name, peer in peers.items()
    ]
    stack.stack_file(project).parent.mkdir(parents=True)
    stack._write(project, services)
    stopped = stack.down(project)
    assert [(service.name, outcome) for service, outcome in stopped] == [
        ("searches", stack.STOPPED), ("mlflow", stack.STOPPED), ("prefect", stack.STOPPED)
    ]  # fmt: skip
    read = {path.name: path.read_text() for path in notes.iterdir()}
    assert read["prefect.worker_gone"] == read["mlflow.worker_gone"] == "True", "the worker stopped before the servers"
    assert read["prefect.gone"] == read["mlflow.gone"] == "True", "each server had its SIGTERM before the other ended"
    assert not stack.stack_file(project).exists()
