"""Console progress of a search: one line per finished candidate with the best so far and timing."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from nas_core.search import CandidateRecord, SearchRun


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class ProgressReporter:
    """Prints ``[done/total] candidate ... | best ... | elapsed ... eta ...`` as candidates finish."""

    def __init__(self, total: int, console: Console | None = None) -> None:
        self.total = total
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.monotonic()

    def __call__(self, record: CandidateRecord, run: SearchRun) -> None:
        done = len(run.records)
        failed = sum(not r.ok for r in run.records)
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total - done) if done else 0.0
        best = run.best()
        outcome = f"val_acc {record.metrics['val_accuracy']:.4f}" if record.ok else f"[red]FAILED[/red] {escape(record.reason)}"
        best_text = f"{best.metrics['val_accuracy']:.4f}" if best else "-"
        self.console.print(
            f"[{done:>3}/{self.total}] {record.origin:<9} {record.hash[:8]} {outcome} | best {best_text}"
            f" failed {failed} | {_clock(elapsed)} eta {_clock(eta)}",
            overflow="ignore",
            crop=False,
        )
