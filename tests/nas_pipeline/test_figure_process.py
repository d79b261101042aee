"""The figure process: figures drawn in another process, errors raised in the caller, and the caller's process as
the fallback (one core, or a process that died)."""

from __future__ import annotations

import os

import pytest

from nas_pipeline import figure_process


def _exit_unless_in(pid: int) -> str:
    """Kills the process it runs in, unless that is ``pid``."""
    if os.getpid() != pid:
        os._exit(1)
    return "drawn here"


def test_figures_are_drawn_in_another_process_that_stays(monkeypatch):
    monkeypatch.setattr(figure_process.os, "cpu_count", lambda: 2)
    assert figure_process.start()
    first = figure_process.draw(os.getpid)
    assert first != os.getpid()
    assert figure_process.draw(os.getpid) == first, "one process, kept for the next figures"


def test_a_drawing_error_is_raised_in_the_caller_and_the_process_stays(monkeypatch, tmp_path):
    monkeypatch.setattr(figure_process.os, "cpu_count", lambda: 2)
    process = figure_process.draw(os.getpid)
    with pytest.raises(ValueError, match="invalid literal"):
        figure_process.draw(int, "not a number")
    with pytest.raises(OSError):  # the drawing's own, not the process's: not drawn again here
        figure_process.draw(os.listdir, str(tmp_path / "missing"))
    assert figure_process.draw(os.getpid) == process


def test_a_dead_figure_process_falls_back_to_the_callers_then_starts_again(monkeypatch):
    monkeypatch.setattr(figure_process.os, "cpu_count", lambda: 2)
    assert figure_process.draw(_exit_unless_in, os.getpid()) == "drawn here"
    assert figure_process.draw(os.getpid) != os.getpid(), "a new figure process"


def test_with_one_core_figures_are_drawn_in_the_callers_process(monkeypatch):
    monkeypatch.setattr(figure_process.os, "cpu_count", lambda: 1)
    assert figure_process.draw(os.getpid) == os.getpid()
    assert not figure_process.start()
