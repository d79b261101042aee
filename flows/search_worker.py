"""The search worker: a long-lived process, started by ``nas up``, that runs the project's searches warm.

Every ``nas search`` process pays about 11 s that depend on no search (docs/local-stack.md): importing torch,
Prefect and MLflow, ``torch._dynamo``, the ONNX exporter setting itself up, MLflow's map of installed packages,
matplotlib. The worker pays them once, then serves :func:`run_search_request` with a Prefect task worker, one
search at a time. ``nas search`` checks its input as usual, then (when the worker is free and uses the same
servers) submits the request with ``.delay()``: the search runs in the worker under its own Prefect flow run and
MLflow runs, exactly as it would have run in the command. Its terminal output goes to two files under
``<project>/.nas/searches/`` that the command prints as they grow; Ctrl-C in the command writes a stop file there
that the worker turns into the stop request a Ctrl-C makes in a search's own process. The exit code comes back
as the task's result.

    python -m flows.search_worker --port 4300 --project-dir .    # what `nas up` starts
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from prefect import task
from prefect.cache_policies import NO_CACHE

CONSOLE_DIR = "searches"  # under the stack's folder: each handed-over search's output and stop request
POLL_S = 0.2  # how often the command prints new output, and the worker looks for a stop request
WORKER_CHECK_S = 5.0  # how often the command checks that the worker still answers (and reads the task run's state)
WORKER_MISSES = 3  # checks in a row without an answer: the worker is gone
TERMINATING = threading.Event()  # SIGTERM (`nas down`): the running search stops, then the worker exits


@dataclass(frozen=True)
class ConsoleFiles:
    """Where a handed-over search writes what its command would have printed, and where a stop is asked."""

    out: Path
    err: Path
    stop: Path

    @classmethod
    def of(cls, project_dir: Path, search_id: str) -> ConsoleFiles:
        from flows.stack import stack_file

        folder = stack_file(project_dir).parent / CONSOLE_DIR
        return cls(folder / f"{search_id}.out", folder / f"{search_id}.err", folder / f"{search_id}.stop")

    def reset(self) -> None:
        """Empty output files and no stop request (a resumed search reuses its id)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stop.unlink(missing_ok=True)
        for path in (self.out, self.err):
            path.write_text("")


@dataclass(frozen=True)
class SearchRequest:
    """A search checked by ``nas search``, to run in the worker as the command would have run it."""

    cwd: str  # the command's working folder: relative paths in the settings are read from there
    config: dict[str, Any]  # SearchConfig as JSON, output folder set
    search_id: str
    resume: bool
    quiet: bool
    fail_under: tuple[str, ...]
    summary_md: str | None
    columns: str | None  # the command's terminal width, for the summary table

    @classmethod
    def of(cls, config: Any, search_id: str, resume: bool, quiet: bool, fail_under: list[str], summary_md: Path | None):
        terminal = sys.stdout.isatty() or sys.stderr.isatty()
        return cls(
            cwd=os.getcwd(), config=config.model_dump(mode="json"), search_id=search_id, resume=resume, quiet=quiet,
            fail_under=tuple(fail_under), summary_md=str(summary_md.absolute()) if summary_md else None,
            columns=str(shutil.get_terminal_size().columns) if terminal else os.environ.get("COLUMNS"),
        )  # fmt: skip

    @property
    def console(self) -> ConsoleFiles:
        return ConsoleFiles.of(Path(self.cwd) / self.config["project_dir"], self.search_id)


# ---- in the worker ------------------------------------------------------------------------------


@contextlib.contextmanager
def _in_folder(folder: str) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """The variables set (None: unset) for the block, as they were after it."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


@contextlib.contextmanager
def _console_to(files: ConsoleFiles) -> Iterator[None]:
    """What the search prints goes to its files (one search at a time: ``sys.stdout`` is the process's)."""
    with (
        files.out.open("a", encoding="utf-8", buffering=1) as out,
        files.err.open("a", encoding="utf-8", buffering=1) as err,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        yield


@contextlib.contextmanager
def _stop_when_asked(stop_file: Path) -> Iterator[None]:
    """While the block runs, a stop file asks the search to stop, as Ctrl-C does in a search's own process."""
    from nas_core.evaluation.stopping import clear_stop, request_stop

    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if stop_file.exists() or TERMINATING.is_set():
                request_stop()  # again at every look: the search clears stop requests when it starts

    watcher = threading.Thread(target=watch, name="nas-stop-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        clear_stop()


def _release_gpu_memory() -> None:
    """A finished search's cached GPU memory goes back to the device (the next search may be another project's)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@task(name="nas-search", cache_policy=NO_CACHE, log_prints=False)
def run_search_request(request: SearchRequest) -> int:
    """Run a search handed over by ``nas search``; its exit code."""
    from flows.running import report_failure, run_search
    from nas_core.config import SearchConfig
    from nas_core.search.gate import parse_gates

    files = request.console
    with _in_folder(request.cwd), _console_to(files), _stop_when_asked(files.stop), _environment(COLUMNS=request.columns):
        try:
            summary_md = Path(request.summary_md) if request.summary_md else None
            return run_search(
                SearchConfig(**request.config), request.search_id, request.resume, request.quiet,
                parse_gates(list(request.fail_under)), summary_md,
            )  # fmt: skip
        except Exception as exc:  # as `nas search` reports it: one line, exit 1
            return report_failure(exc)
        finally:
            _release_gpu_memory()


def warm_up() -> None:
    """Do once what every search would do first: import its libraries and set up what they set up on first use."""
    import numpy as np
    import torch._dynamo  # noqa: F401 - loaded by PyTorch's first optimizer
    from dvc.repo import Repo
    from torch import nn

    import flows.running  # noqa: F401 - the reports of a search
    import flows.search  # noqa: F401 - Prefect, MLflow, torch and the search core
    from nas_pipeline import figure_process, plots
    from nas_pipeline.onnx_export import export_onnx

    figure_process.start()  # the process the best few's figures are drawn in while the best is exported
    plots.warm_up()  # the search's own plots (the report's) are drawn here

    with tempfile.TemporaryDirectory() as folder:  # the exporter's registry, onnx.checker, onnxruntime
        export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), Path(folder) / "warm.onnx", np.zeros((1, 4), "float32"), {})
        Repo(folder, uninitialized=True).close()  # the modules DVC's Repo loads on first use, for the data push
    with contextlib.suppress(Exception):  # MLflow's map of installed packages, built when a model is logged
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()  # noqa: SLF001 - no public way to build it ahead


def _search_task_worker(serving: asyncio.Task[None]) -> Any:
    """Prefect's task worker for :func:`run_search_request`, stopped by SIGTERM.

    Prefect's own SIGTERM handler stops the task worker on Prefect's event loop thread, not the one ``serving`` runs
    in (``asyncio.run``): it kept serving until ``nas down`` killed it 20 s later, a search in it left RUNNING. Here
    the search stops as on Ctrl-C (runs KILLED, checkpoint kept) and the worker exits once it has."""
    from prefect.task_worker import TaskWorker, logger

    class SearchTaskWorker(TaskWorker):
        def handle_sigterm(self, signum: int, frame: object) -> None:
            logger.info("SIGTERM received: the running search (if any) stops, then the worker")
            TERMINATING.set()
            serving.get_loop().call_soon_threadsafe(lambda: asyncio.ensure_future(self.stop_when_idle()))

        async def stop_when_idle(self) -> None:
            while self.current_tasks:  # the search's run ends first: cancelled, Prefect would log it as failed
                await asyncio.sleep(POLL_S)
            serving.cancel()

    return SearchTaskWorker(run_search_request, limit=1)


async def _serve_tasks(port: int) -> None:
    """Prefect's task worker with its status app on ``port``; the app's server logs nothing of its own (Prefect's
    ``serve(status_server_port=...)`` lets uvicorn reset the process's logging, which fails on Prefect's API log
    handler). Returns after SIGTERM, once the running search (if any) has stopped."""
    import uvicorn
    from prefect.task_worker import create_status_server

    serving = asyncio.current_task()
    assert serving is not None
    worker = _search_task_worker(serving)
    config = uvicorn.Config(
        create_status_server(worker), host="127.0.0.1", port=port, access_log=False, log_config=None, log_level="warning"
    )
    status = asyncio.get_running_loop().create_task(uvicorn.Server(config).serve())
    try:
        await worker.astart()
    except asyncio.CancelledError:
        if not TERMINATING.is_set():
            raise
    finally:
        status.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await status


def serve(port: int, project_dir: Path) -> None:
    """Warm up, then run handed-over searches one at a time; ``/status`` on ``port`` answers once warm."""
    from flows.running import prefect_environment

    prefect_environment(project_dir, quiet_console=True)
    started = time.monotonic()
    warm_up()
    print(f"search worker warm in {time.monotonic() - started:.1f} s; serving on 127.0.0.1:{port}", flush=True)
    asyncio.run(_serve_tasks(port))


# ---- in the command ------------------------------------------------------------------------------


class _Tail:
    """Prints what a file gained since the last look (whole lines only, the rest at the end)."""

    def __init__(self, path: Path, stream: TextIO) -> None:
        self.path, self.stream, self.offset = path, stream, 0

    def print_new(self, everything: bool = False) -> None:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return
        if not everything:
            data = data[: data.rfind(b"\n") + 1]
        if data:
            self.offset += len(data)
            self.stream.write(data.decode("utf-8", errors="replace"))
            self.stream.flush()


def _follow(future: Any, tails: list[_Tail], worker_url: str) -> bool:
    """Print the search's output as it comes until its task run ends; False when the worker stopped answering.

    The end comes as Prefect's event (a done callback); the task run's state is also read at each check of the
    worker, in case an event was missed."""
    from flows.stack import worker_status

    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    checked, misses = time.monotonic(), 0
    while not done.wait(POLL_S):
        for tail in tails:
            tail.print_new()
        if time.monotonic() - checked > WORKER_CHECK_S:  # a worker busy training may answer late: only misses in a row
            checked = time.monotonic()
            if future.state.is_final():
                break
            misses = 0 if worker_status(worker_url, timeout=WORKER_CHECK_S) is not None else misses + 1
            if misses == WORKER_MISSES:
                return False
    return True


def hand_off(worker_url: str, request: SearchRequest) -> int | None:
    """Run the search in the worker and print its output here as it comes; its exit code (None: the worker cannot
    take it, run it here).

    Ctrl-C (or SIGTERM) asks the worker to stop the search (runs KILLED, checkpoint kept) and waits for it to say so;
    a second one leaves at once, the worker then stops the search on its own. Prefect's environment must have been
    set for the worker (as `nas search` does) before Prefect was imported."""
    from flows import running
    from flows.stack import worker_status

    files = request.console
    files.reset()
    if run_search_request.task_key not in (worker_status(worker_url) or {}).get("tasks", []):  # other code: restarted?
        running.console.print("warning: the search worker runs other code than this command (restart it: nas down, nas up); "
                          "the search runs here")  # fmt: skip
        return None
    from flows.signals import Interrupted, stop_on_signals

    future = run_search_request.delay(request)
    tails = [_Tail(files.out, sys.stdout), _Tail(files.err, sys.stderr)]
    stopped: Interrupted | None = None
    while True:
        try:
            with stop_on_signals():
                if not _follow(future, tails, worker_url):
                    running.console.print(f"error: the search worker {worker_url} stopped answering (see nas status); "
                                      f"continue the search: nas search --resume {request.config['output']}")  # fmt: skip
                    return running.EXIT_FAILED
            break
        except Interrupted as exc:
            if stopped is not None:  # the second one: leave, the worker stops the search by itself
                return exc.exit_code
            stopped = exc
            files.stop.touch()
    for tail in tails:
        tail.print_new(everything=True)
    if not future.state.is_completed():
        running.console.print(f"error: the search worker could not run the search: {future.state.message}")
        return running.EXIT_FAILED
    code = int(future.result())
    return stopped.exit_code if stopped is not None and code == running.EXIT_INTERRUPTED else code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.search_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port of the worker's /status on 127.0.0.1")
    parser.add_argument("--project-dir", type=Path, default=Path("."), help="the project whose searches it runs")
    args = parser.parse_args(argv)
    serve(args.port, args.project_dir.resolve())


if __name__ == "__main__":
    main()
