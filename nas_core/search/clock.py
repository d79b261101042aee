"""A search's time budget: how long it has run (across resumes) and how many more evaluations fit in what is left.

The estimate is the median wall time per epoch of the evaluations trained so far; a generation of ``n`` evaluations
of ``e`` epochs on ``w`` workers is expected to take ``ceil(n / w)`` rounds of ``e`` epochs. Without any evaluation
yet, nothing is estimated: the first generation is planned whole, and a candidate that has not started when the time
is up is skipped (:attr:`EvaluationRequest.deadline`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

from nas_core.search.records import Evaluation

# why a search stopped proposing (summary.json's stop_reason; "interrupted" is tagged on the search's run)
STOP_BUDGET, STOP_TIME, STOP_EXHAUSTED, STOP_INTERRUPTED = "budget", "time", "space exhausted", "interrupted"


class SearchClock:
    """Seconds spent by the search (earlier processes' included) against its ``budget_seconds`` (None: no limit)."""

    def __init__(self, budget_seconds: float | None, workers: int, spent_before: float = 0.0) -> None:
        self.budget_seconds, self.workers = budget_seconds, max(1, workers)
        self.spent_before = spent_before
        self.started = time.monotonic()

    def spent(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def remaining(self) -> float | None:
        return None if self.budget_seconds is None else self.budget_seconds - self.spent()

    def deadline(self) -> float | None:
        """The unix time the budget runs out (None: no budget)."""
        remaining = self.remaining()
        return None if remaining is None else time.time() + remaining

    def restore(self, spent_before: float) -> None:
        """Continue a resumed search's clock (the time its earlier processes spent)."""
        self.spent_before, self.started = spent_before, time.monotonic()

    @staticmethod
    def seconds_per_epoch(records: Sequence[Evaluation]) -> float | None:
        """The median wall seconds per epoch of the evaluations trained so far (None before the first)."""
        rates = [
            r.metrics["wall_seconds"] / r.fidelity
            for r in records
            if r.trained and r.fidelity > 0 and r.metrics.get("wall_seconds") is not None
        ]
        return statistics.median(rates) if rates else None

    def affordable(self, epochs: Sequence[int], records: Sequence[Evaluation]) -> int:
        """How many of the evaluations of ``epochs`` (in order) fit in the time left; all of them without a budget or
        an estimate, none when the time is up."""
        remaining = self.remaining()
        if remaining is None:
            return len(epochs)
        if remaining <= 0:
            return 0
        rate = self.seconds_per_epoch(records)
        if rate is None:
            return len(epochs)
        for count in range(len(epochs), 0, -1):
            rounds = math.ceil(count / self.workers)
            if rounds * max(epochs[:count]) * rate <= remaining:
                return count
        return 0
