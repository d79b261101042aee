"""What a search remembers from earlier ones: the evaluations its tracking store already holds.

Every candidate run is tagged with its evaluation key and context key (:mod:`nas_core.search.identity`), its
architecture identity, space and genome, and a successful one with its result (``metrics``, JSON).
:class:`EvaluationMemory` is the port that reads them back; the tracker gives one (``tracker.memory()``): MLflow's
in :mod:`nas_pipeline`, and :class:`RunsMemory` over a :class:`~nas_core.search.ports.MemoryTracker` here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nas_core.genome import Genome

CANDIDATE_ROLE = "candidate"
GENOME_TAG_LIMIT = 5000  # genome JSON longer than this is read from the run's genome.json artifact instead of a tag


class WarmStartError(ValueError):
    """A warm start that cannot be done as asked (an unknown search, another space): bad input, nothing written."""


@dataclass(frozen=True)
class StoredEvaluation:
    """A finished, successful evaluation an earlier search recorded."""

    run_id: str  # the run that measured it (a reused run points at its source)
    search_id: str
    hash: str  # the architecture's identity in its space
    fidelity: int
    genome: Genome
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = 0.0  # when its run started (unix seconds): older first when telling a strategy


@dataclass(frozen=True)
class EarlierSearch:
    """A search recorded in the store: its id, space and when it started."""

    search_id: str
    space: str
    started: float


class EvaluationMemory(Protocol):
    """Reads earlier searches and their evaluations from the tracking store (the search's experiment)."""

    def searches(self) -> list[EarlierSearch]:
        """Every search recorded in the experiment, oldest first."""
        ...

    def lookup(self, evaluation_key: str) -> StoredEvaluation | None:
        """A finished evaluation with exactly this key, if any (the newest)."""
        ...

    def comparable(self, context_key: str, search_ids: Sequence[str] | None) -> list[StoredEvaluation]:
        """Finished evaluations with this context key (of ``search_ids`` only, when given), oldest first; the runs
        that measured them, not the reused copies."""
        ...

    def best_of(self, space: str, search_ids: Sequence[str] | None, count: int) -> list[StoredEvaluation]:
        """The ``count`` best-by-validation finished evaluations in ``space`` (of ``search_ids``), any data version."""
        ...


def genome_tag(genome: Genome) -> dict[str, str]:
    """The ``genome`` tag of a candidate run, when its JSON is short enough for a tag."""
    text = json.dumps(genome.to_dict(), separators=(",", ":"))
    return {"genome": text} if len(text) <= GENOME_TAG_LIMIT else {}


def source_of(run_id: str, tags: dict[str, str]) -> str:
    """The run that measured an evaluation: the run itself, or the source of a reused one."""
    return tags.get("reused_from") or run_id


def rank(metrics: dict[str, float]) -> tuple[float, float, float]:
    """Validation accuracy, then F1, then fewer parameters (as :meth:`Evaluation.selection_key`)."""
    return (metrics.get("val_accuracy", -1.0), metrics.get("val_f1", -1.0), -metrics.get("params", 0.0))


def best_first(evaluations: Iterable[StoredEvaluation], count: int) -> list[StoredEvaluation]:
    """The ``count`` best by :func:`rank`, one per architecture."""
    ranked = sorted(evaluations, key=lambda e: rank(e.metrics), reverse=True)
    picked: dict[str, StoredEvaluation] = {}
    for evaluation in ranked:
        picked.setdefault(evaluation.hash, evaluation)
    return list(picked.values())[:count]


def longest_per_architecture(evaluations: Iterable[StoredEvaluation]) -> list[StoredEvaluation]:
    """One evaluation per architecture: its longest training (the newest of equals), oldest first."""
    kept: dict[str, StoredEvaluation] = {}
    for evaluation in sorted(evaluations, key=lambda e: e.started):
        known = kept.get(evaluation.hash)
        if known is None or evaluation.fidelity >= known.fidelity:
            kept[evaluation.hash] = evaluation
    return sorted(kept.values(), key=lambda e: e.started)


class RunsMemory:
    """:class:`EvaluationMemory` over the runs of a :class:`~nas_core.search.ports.MemoryTracker`."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def _finished_candidates(self, originals: bool = False) -> list[tuple[str, Any]]:
        """Finished candidate runs, oldest first (``originals``: not the reused copies, whose sources are here too)."""
        return [
            (run_id, run)
            for run_id, run in self.tracker.runs.items()
            if run.status == "FINISHED"
            and run.tags.get("role") == CANDIDATE_ROLE
            and "metrics" in run.tags
            and not (originals and "reused_from" in run.tags)
        ]

    def _stored(self, run_id: str, run: Any, order: int) -> StoredEvaluation:
        genome = Genome.from_dict(json.loads(run.tags["genome"]) if "genome" in run.tags else run.artifacts["genome.json"])
        metrics = json.loads(run.tags["metrics"])
        return StoredEvaluation(
            source_of(run_id, run.tags), run.tags["search_id"], run.tags["hash"], int(run.tags["fidelity"]), genome,
            metrics, float(order),
        )  # fmt: skip

    def searches(self) -> list[EarlierSearch]:
        return [
            EarlierSearch(run.tags["search_id"], run.params.get("space", ""), float(order))
            for order, run in enumerate(self.tracker.runs.values())
            if run.tags.get("role") == "search"
        ]

    def lookup(self, evaluation_key: str) -> StoredEvaluation | None:
        hits = [
            self._stored(run_id, run, order)
            for order, (run_id, run) in enumerate(self._finished_candidates())
            if run.tags["evaluation_key"] == evaluation_key
        ]
        return hits[-1] if hits else None

    def comparable(self, context_key: str, search_ids: Sequence[str] | None) -> list[StoredEvaluation]:
        return [
            self._stored(run_id, run, order)
            for order, (run_id, run) in enumerate(self._finished_candidates(originals=True))
            if run.tags.get("context_key") == context_key and (search_ids is None or run.tags["search_id"] in search_ids)
        ]

    def best_of(self, space: str, search_ids: Sequence[str] | None, count: int) -> list[StoredEvaluation]:
        found = [
            self._stored(run_id, run, order)
            for order, (run_id, run) in enumerate(self._finished_candidates(originals=True))
            if run.tags.get("space") == space and (search_ids is None or run.tags["search_id"] in search_ids)
        ]
        return best_first(found, count)
