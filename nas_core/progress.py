"""Console progress of a search: one line per finished candidate with the best so far and timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from nas_core.search import CandidateRecord


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class ProgressReporter:
    """Prints ``[done/total] origin hash val_acc | best | failed | elapsed eta`` as each candidate ends."""

    def __init__(
        self, total: int, console: Console | None = None, finished: Sequence[CandidateRecord] = (), killed: int = 0
    ) -> None:
        self.total = total
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.monotonic()
        self.done, self.failed = len(finished), sum(not r.ok for r in finished)
        accuracies = [r.metrics["val_accuracy"] for r in finished if r.ok]
        self.best: float | None = max(accuracies) if accuracies else None
        self._resumed = len(finished)  # the ETA only counts candidates trained by this process
        self._lock = threading.Lock()  # candidates finish on several threads
        if finished or killed:
            self.console.print(
                f"resumed: {self.done}/{total} candidates already finished ({self.failed} failed); "
                f"{killed} interrupted run(s) marked KILLED and queued again"
            )

    def __call__(self, record: CandidateRecord) -> None:
        with self._lock:
            self.done += 1
            if record.ok:
                accuracy = record.metrics["val_accuracy"]
                self.best = accuracy if self.best is None else max(self.best, accuracy)
                outcome = f"val_acc {accuracy:.4f}"
            else:
                self.failed += 1
                outcome = f"[red]FAILED[/red] {escape(record.reason)}"
            elapsed = time.monotonic() - self.started
            eta = elapsed / max(1, self.done - self._resumed) * max(0, self.total - self.done)
            best = f"{self.best:.4f}" if self.best is not None else "-"
            self.console.print(
                f"[{self.done:>3}/{self.total}] {record.origin:<9} {record.hash[:8]} {outcome} | best {best}"
                f" failed {self.failed} | {_clock(elapsed)} eta {_clock(eta)}",
                overflow="ignore",
                crop=False,
            )
