"""ProgressReporter: plain lines off a terminal, the live bar on one, counts, best, running, stages, threads."""

from __future__ import annotations

import io
import re
import threading

from rich.console import Console

from nas_core.genome import Genome
from nas_core.search.progress import ProgressReporter
from nas_core.search.records import Evaluation

GENOME = Genome.from_dict(
    {"nodes": [{"id": "input", "op": "input"}, {"id": "output", "op": "output"}], "edges": [["input", "output"]]}
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def record(index: int, accuracy: float | None, fidelity: int = 12) -> Evaluation:
    ok = accuracy is not None
    metrics = {"val_accuracy": accuracy} if ok else {}
    return Evaluation(
        index, 0, GENOME, "random", [], [], f"run{index}", "ok" if ok else "failed", "" if ok else "out of [memory]",
        metrics, hash=f"{index:08x}ffff", fidelity=fidelity,
    )  # fmt: skip


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, highlight=False), out


def test_plain_lines_stages_and_no_control_codes():
    con, out = console(terminal=False)
    with ProgressReporter(3, console=con) as reporter:
        assert not reporter.live
        reporter.stage("preparing data")
        reporter.stage("preparing data")  # unchanged: no second line
        reporter.submitted(3)
        assert reporter.running == 3
        reporter.stage("training generation 1")
        reporter.recorded(record(0, 0.5, fidelity=4))
        reporter.recorded(record(1, None))
        reporter.recorded(record(2, 0.75))
        assert (reporter.done, reporter.failed, reporter.best, reporter.running) == (3, 1, 0.75, 0)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["stage: preparing data", "stage: training generation 1"]
    assert lines[2].startswith("[  1/3] random    00000000 e4 val_acc 0.5000 | best 0.5000 failed 0 | 0:00 eta")
    assert lines[3].startswith("[  2/3] random    00000001 e12 FAILED out of [memory] | best 0.5000 failed 1 |")
    assert lines[4].startswith("[  3/3] random    00000002 e12 val_acc 0.7500 | best 0.7500 failed 1 | 0:00 eta 0:00")
    assert len(lines) == 5 and not ANSI.search(out.getvalue())


def test_live_bar_shows_counts_best_running_and_stage_and_keeps_lines():
    con, out = console(terminal=True)
    reporter = ProgressReporter(4, console=con)
    assert reporter.live
    reporter.stage("training generation 2")
    reporter.submitted(3)
    reporter.recorded(record(0, 0.625))
    screen = out.getvalue()
    assert "1/4" in screen and "running 2" in screen and "failed 0" in screen and "best 0.6250" in screen
    assert "training generation 2" in screen and ANSI.search(screen)
    assert "stage:" not in screen  # the stage is on the bar, not a line
    reporter.recorded(record(1, None))
    reporter.stage("exporting ONNX")
    reporter.close()
    reporter.close()  # idempotent
    assert not reporter.live
    tail = out.getvalue()[len(screen) :]
    assert "2/4" in tail and "running 1" in tail and "failed 1" in tail and "exporting ONNX" in tail
    text = ANSI.sub("", out.getvalue())  # every finished candidate stays as a line above the bar
    assert "[  1/4] random    00000000 e12 val_acc 0.6250 | best 0.6250 failed 0 |" in text
    assert "[  2/4] random    00000001 e12 FAILED out of [memory] | best 0.6250 failed 1 |" in text


def test_resumed_counts_and_running_only_this_process():
    con, out = console(terminal=False)
    reporter = ProgressReporter(5, console=con, finished=[record(0, 0.9), record(1, None)], killed=1)
    assert out.getvalue().startswith("resumed: 2/5 candidates already finished (1 failed); 1 interrupted run(s)")
    assert (reporter.done, reporter.failed, reporter.best, reporter.running) == (2, 1, 0.9, 0)
    reporter.submitted(3)
    reporter.recorded(record(2, 0.8))
    assert (reporter.done, reporter.best, reporter.running) == (3, 0.9, 2)


def test_resumed_later_on_the_live_bar_and_quiet_prints_nothing():
    con, out = console(terminal=True)
    with ProgressReporter(5, console=con) as reporter:
        reporter.stage("preparing data")
        reporter.resumed([record(0, 0.9)], killed=0)
        reporter.submitted(4)
        assert (reporter.done, reporter.best, reporter.running) == (1, 0.9, 4)
    assert "resumed: 1/5 candidates already finished (0 failed)" in ANSI.sub("", out.getvalue())
    con, out = console(terminal=True)
    with ProgressReporter(5, console=con, slots=2) as reporter:
        reporter.submitted(5)
        assert (reporter.running, reporter.queued) == (2, 3)
        reporter.recorded(record(0, 0.5))
        assert (reporter.running, reporter.queued) == (2, 2)
    assert "running 2 queued 2" in ANSI.sub("", out.getvalue())
    con, out = console(terminal=True)
    with ProgressReporter(2, console=con, quiet=True) as reporter:
        assert not reporter.live
        reporter.stage("training generation 1")
        reporter.submitted(2)
        reporter.recorded(record(0, 0.5))
        assert (reporter.done, reporter.best, reporter.running) == (1, 0.5, 1)
    assert out.getvalue() == ""


def test_records_from_many_threads_are_all_counted():
    con, out = console(terminal=True)
    with ProgressReporter(200, console=con) as reporter:
        reporter.submitted(200)

        def finish(first: int) -> None:
            for j in range(50):
                reporter.recorded(record(first + j, j / 100))

        threads = [threading.Thread(target=finish, args=(50 * i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (reporter.done, reporter.running, reporter.best) == (200, 0, 0.49)
    assert "[200/200]" in out.getvalue()
