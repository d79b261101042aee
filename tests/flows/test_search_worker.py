"""The pieces of a search handed to the warm worker: its request, its output files and how the command prints them,
and the stop request. The worker itself, with `nas up` and a real search, is tested in tests/e2e/test_stack.py."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from flows import search_worker
from flows.search_worker import ConsoleFiles, SearchRequest, _console_to, _stop_when_asked, _Tail
from nas_core.config import SearchConfig
from nas_core.evaluation.stopping import clear_stop, stop_requested


def _files(tmp_path: Path) -> ConsoleFiles:
    files = ConsoleFiles.of(tmp_path, "s1")
    files.reset()
    return files


def test_console_files_live_in_the_stack_folder_and_reset_empties_them(tmp_path):
    files = ConsoleFiles.of(tmp_path, "s1")
    assert files.out == tmp_path.resolve() / ".nas" / "searches" / "s1.out"
    files.reset()
    files.out.write_text("old run\n")
    files.stop.touch()
    files.reset()
    assert files.out.read_text() == "" and files.err.read_text() == "" and not files.stop.exists()


def test_the_tail_prints_whole_lines_as_they_come_and_the_rest_at_the_end(tmp_path):
    path, shown = tmp_path / "out", io.StringIO()
    tail = _Tail(path, shown)
    tail.print_new()  # no file yet: nothing, no error
    path.write_text("one\ntw")
    tail.print_new()
    assert shown.getvalue() == "one\n"
    with path.open("a") as file:
        file.write("o\nthree")
    tail.print_new()
    assert shown.getvalue() == "one\ntwo\n"
    tail.print_new(everything=True)
    assert shown.getvalue() == "one\ntwo\nthree"


def test_what_the_search_prints_goes_to_its_files(tmp_path):
    files = _files(tmp_path)
    with _console_to(files):
        print("result line")
        Console(stderr=True).print("progress line")  # rich finds sys.stderr when it writes, as the search's do
    print("after the block")
    assert files.out.read_text() == "result line\n"
    assert files.err.read_text() == "progress line\n"


def test_a_stop_file_asks_the_search_to_stop_again_after_it_clears_and_not_after_the_block(tmp_path):
    files = _files(tmp_path)
    clear_stop()
    with _stop_when_asked(files.stop):
        time.sleep(3 * search_worker.POLL_S)
        assert not stop_requested()
        files.stop.touch()
        assert _eventually(stop_requested)
        clear_stop()  # what a search does when it starts: the request is made again
        assert _eventually(stop_requested)
    assert not stop_requested()
    assert not any(t.name == "nas-stop-watcher" for t in threading.enumerate())


def test_sigterm_to_the_worker_asks_the_running_search_to_stop(tmp_path, monkeypatch):
    files = _files(tmp_path)
    clear_stop()
    monkeypatch.setattr(search_worker, "TERMINATING", threading.Event())
    with _stop_when_asked(files.stop):
        search_worker.TERMINATING.set()  # what the worker's SIGTERM handler sets, no stop file
        assert _eventually(stop_requested)
    assert not stop_requested()


def _eventually(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_request_keeps_the_command_folder_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setenv("COLUMNS", "150")
    config = SearchConfig(output=tmp_path / "out")
    request = SearchRequest.of(config, "s1", False, True, ["val_accuracy=0.5"], Path("summary.md"))
    assert request.cwd == str(tmp_path)
    assert request.summary_md == str(tmp_path / "summary.md")
    assert request.fail_under == ("val_accuracy=0.5",) and request.columns == "150"
    assert SearchConfig(**request.config) == config  # the worker rebuilds the very settings
    assert request.console == ConsoleFiles.of(tmp_path, "s1")  # the project folder is read from the command's folder


def test_the_command_terminal_width_is_set_for_the_search_only(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.delenv("NAS_TEST_UNSET", raising=False)
    with search_worker._environment(COLUMNS="150", NAS_TEST_UNSET=None):
        assert os.environ["COLUMNS"] == "150" and "NAS_TEST_UNSET" not in os.environ
    with search_worker._environment(COLUMNS=None):
        assert "COLUMNS" not in os.environ
    assert os.environ["COLUMNS"] == "80"
