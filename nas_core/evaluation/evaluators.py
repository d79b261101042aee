"""Evaluators by name: how a candidate gets its metrics. ``train`` trains it; ``table`` looks it up in a benchmark.

A search's ``evaluator`` setting is ``train`` or ``table:PATH``; the part before the colon is the registered name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nas_core.data.preparation import PreparedData
from nas_core.evaluation.table import DEFAULT_REPORT_METRIC, DEFAULT_SELECT_METRIC, TableEvaluator
from nas_core.evaluation.training import CandidateFailed, TrainConfig, train_genome
from nas_core.genome import Genome
from nas_core.registry import Registry


class Evaluator(Protocol):
    """What a search needs from an evaluator."""

    def evaluate(self, space: Any, genome: Genome) -> dict[str, float]:
        """The metrics of ``genome`` in ``space``: at least ``val_accuracy`` (selects) and ``test_accuracy`` (reports)."""


# name -> factory(**options) -> Evaluator
EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator")


def register_evaluator(name: str) -> Callable[[Callable[..., Evaluator]], Callable[..., Evaluator]]:
    """Decorator: register an evaluator factory (a class or function) under ``name``."""
    return EVALUATORS.register(name)


@register_evaluator("train")
@dataclass(frozen=True)
class TrainEvaluator:
    """Trains the genome on prepared data as the search does (built by ``space.build``, seeded by ``config.seed``)."""

    data: PreparedData
    config: TrainConfig = field(default_factory=TrainConfig)

    def evaluate(self, space: Any, genome: Genome) -> dict[str, float]:
        """The trained candidate's metrics; a failed training (diverged, out of time) raises CandidateFailed."""
        result = train_genome(genome, self.data, self.config, build=space.build, keep_state=False)
        if result.status != "ok":
            raise CandidateFailed(result.reason)
        return result.metrics()


@register_evaluator("table")
def table_evaluator(path: Path | str, select: str = DEFAULT_SELECT_METRIC, report: str = DEFAULT_REPORT_METRIC) -> TableEvaluator:
    """The tabular benchmark at ``path``: selects by column ``select``, reports column ``report``."""
    return TableEvaluator.load(path, select, report)


def create_evaluator(name: str, **options: Any) -> Evaluator:
    """The evaluator registered as ``name``, built with ``options`` (a ValueError lists the known names)."""
    return EVALUATORS.create(name, **options)


def list_evaluators() -> list[str]:
    """The registered evaluator names, in registration order."""
    return EVALUATORS.names()
