"""How the loop's steps run: evaluations one by one in this thread, steps inline, and the time each stage takes.

A flow passes its own: evaluations on its task runner, each step as a task (see ``flows/search.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from nas_core.evaluation.worker import evaluate
from nas_core.search.records import EvaluationRequest, EvaluationResult

T = TypeVar("T")
Evaluate = Callable[[list[EvaluationRequest]], Iterable[EvaluationResult]]
Stage = Callable[[str, Callable[[], T]], T]


def evaluate_here(requests: list[EvaluationRequest]) -> Iterator[EvaluationResult]:
    """Evaluate requests one after the other in this thread."""
    for request in requests:
        yield evaluate(request)


def run_inline(name: str, step: Callable[[], T]) -> T:
    """Run a step where the loop is."""
    return step()


class Stopwatch:
    """Seconds spent per stage, in this process (for the summary and the overhead benchmark)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time spent inside the block to ``seconds[stage]``."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.monotonic() - started
