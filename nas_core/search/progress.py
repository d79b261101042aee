"""Console progress of a search: a live bar on a terminal, and one line per finished candidate everywhere.

On a terminal the bar shows candidates done/total, running, failed, the best validation accuracy so far,
elapsed time, ETA and the current stage, and each finished candidate is printed above it so the history
stays. Elsewhere (CI logs, pipes) only plain lines are printed, one per candidate and one per stage change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task
from rich.text import Text

if TYPE_CHECKING:
    from nas_core.search.records import Evaluation

REFRESH_PER_SECOND = 4


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class _Field(ProgressColumn):
    """A column whose text comes from the reporter at each refresh (the bar has one task: the search)."""

    def __init__(self, text: Callable[[], str], style: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.text, self.style = text, style

    def render(self, task: Task) -> Text:
        return Text(self.text(), style=self.style())


class ProgressReporter:
    """Called with each finished :class:`Evaluation`; prints ``[done/total] origin hash eN val_acc | best | ...``.

    ``total`` counts the evaluations the search plans (in a multi-fidelity search one architecture may be
    evaluated at several epochs); ``finished`` and ``killed`` describe a resumed search (or call
    :meth:`resumed` later). ``slots`` is how many candidates can train at once (the workers): jobs handed
    out beyond it show as queued. ``quiet`` prints nothing. Thread-safe. Use it as a context manager, or call
    :meth:`close`, to stop the live display.
    """

    def __init__(
        self,
        total: int,
        console: Console | None = None,
        finished: Sequence[Evaluation] = (),
        killed: int = 0,
        quiet: bool = False,
        slots: int | None = None,
    ) -> None:
        self.total, self.slots = total, slots
        self.console = Console(quiet=True) if quiet else console or Console(stderr=True, highlight=False)
        self.started = time.monotonic()
        self.done = self.failed = 0
        self.best: float | None = None
        self.current_stage = ""
        self._resumed = 0  # the ETA and running only count candidates of this process
        self._submitted = 0
        self._first_submit: float | None = None
        self._eta_deadline: float | None = None
        self._lock = threading.Lock()  # candidates finish on several threads
        self._progress: Progress | None = None
        if self.console.is_terminal and not quiet:
            self._progress = Progress(
                BarColumn(),
                MofNCompleteColumn(),
                _Field(lambda: f"running {self.running}" + (f" queued {self.queued}" if self.queued else "")),
                _Field(lambda: f"failed {self.failed}", lambda: "red" if self.failed else ""),
                _Field(lambda: f"best {self._best_text()}", lambda: "green"),
                _Field(lambda: _clock(time.monotonic() - self.started)),
                _Field(lambda: f"eta {self._eta_text()}"),
                _Field(lambda: self.current_stage, lambda: "cyan"),
                console=self.console,
                transient=False,
                refresh_per_second=REFRESH_PER_SECOND,
            )
            self._task = self._progress.add_task("search", total=total, completed=self.done)
            self._progress.start()
        if finished or killed:
            self.resumed(finished, killed)

    @property
    def live(self) -> bool:
        """Whether the live bar is showing (a terminal, not closed yet)."""
        return self._progress is not None and self._progress.live.is_started

    @property
    def _in_flight(self) -> int:
        return max(0, self._submitted - (self.done - self._resumed))

    @property
    def running(self) -> int:
        """Jobs handed out by this process, not finished yet, and within the ``slots``."""
        return self._in_flight if self.slots is None else min(self._in_flight, self.slots)

    @property
    def queued(self) -> int:
        """Jobs handed out by this process that wait for a slot."""
        return self._in_flight - self.running

    def _best_text(self) -> str:
        return f"{self.best:.4f}" if self.best is not None else "-"

    def _eta_text(self) -> str:
        if self._eta_deadline is None:
            return "-"
        return _clock(max(0.0, self._eta_deadline - time.monotonic()))

    def resumed(self, finished: Sequence[Evaluation], killed: int = 0) -> None:
        """Count the candidates a resumed search had already finished; one line says so (and how many were killed)."""
        with self._lock:
            accuracies = [r.metrics["val_accuracy"] for r in finished if r.ok]
            if accuracies:
                self.best = max(accuracies) if self.best is None else max(self.best, *accuracies)
            self.done += len(finished)
            self.failed += sum(not r.ok for r in finished)
            self._resumed += len(finished)
            if finished or killed:
                self.console.print(
                    f"resumed: {self.done}/{self.total} candidates already finished ({self.failed} failed); "
                    f"{killed} interrupted run(s) marked KILLED and queued again"
                )
            self._refresh()

    def submitted(self, count: int) -> None:
        """``count`` jobs were handed to workers."""
        with self._lock:
            self._first_submit = self._first_submit or time.monotonic()
            self._submitted += count
            self._refresh()

    def stage(self, text: str) -> None:
        """The search moved on to ``text`` (e.g. "training generation 3"); printed as a line off a terminal."""
        with self._lock:
            if text == self.current_stage:
                return
            self.current_stage = text
            if not self.live:
                self.console.print(f"stage: {escape(text)}", overflow="ignore", crop=False)
            self._refresh()

    def recorded(self, record: Evaluation) -> None:
        with self._lock:
            self.done += 1
            self.total = max(self.total, self.done)  # asynchronous promotions can add evaluations to the plan
            if record.ok:
                accuracy = record.metrics["val_accuracy"]
                self.best = accuracy if self.best is None else max(self.best, accuracy)
                outcome = f"val_acc {accuracy:.4f}"
            else:
                self.failed += 1
                outcome = f"[red]FAILED[/red] {escape(record.reason)}"
            now = time.monotonic()
            # the pace of this process's candidates since the first was handed out (not data preparation)
            pace = (now - (self._first_submit or self.started)) / max(1, self.done - self._resumed)
            eta = pace * max(0, self.total - self.done)
            self._eta_deadline = now + eta
            fidelity = f" e{record.fidelity}" if record.fidelity else ""
            self.console.print(
                f"[{self.done:>3}/{self.total}] {record.origin:<9} {record.hash[:8]}{fidelity} {outcome}"
                f" | best {self._best_text()} failed {self.failed} | {_clock(now - self.started)} eta {_clock(eta)}",
                overflow="ignore",
                crop=False,
            )
            self._refresh()

    def _refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, total=self.total, refresh=True)

    def close(self) -> None:
        """Stop the live display, leaving its last state on screen (idempotent)."""
        with self._lock:
            if self.live:
                assert self._progress is not None
                self._progress.stop()

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None) -> None:
        self.close()
