"""The accuracy/latency front of a search, for ``export: pareto``: which models to hand over beside the best.

While the search runs, :class:`FrontWeights` keeps the trained weights of every evaluation on the front of
validation accuracy (higher is better) against predicted latency (lower is better) and drops those that fall off
it, so that at the end each chosen model can be exported without training it again. Only evaluations this search
trained have weights: reused and warm-start results take part in the front only through the best (which the search
retrains when it wins).

:func:`choose` picks at most ``limit`` models of the final front: the best, the fastest, the most accurate under
each latency target, then evenly spread along the latency axis. Which one is fastest or under a target is decided
again by the pipeline from the latency it measures on each exported model (the prediction only chose them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nas_core.latency import LATENCY_METRIC
from nas_core.search import checkpoint as files
from nas_core.search.records import Evaluation
from nas_core.strategies.multi_objective import non_dominated_sort

FRONT_DIR = "front_weights"  # in the search's output folder: <hash>.pt per front member (deleted when it falls off)


def _point(evaluation: Evaluation) -> tuple[float, float] | None:
    """(predicted latency, -validation accuracy): both minimised; None without finite figures."""
    latency, accuracy = evaluation.metrics.get(LATENCY_METRIC), evaluation.metrics.get("val_accuracy")
    if latency is None or accuracy is None or not (math.isfinite(latency) and math.isfinite(accuracy)):
        return None
    return float(latency), -float(accuracy)


def front_of(evaluations: Iterable[Evaluation]) -> list[Evaluation]:
    """The non-dominated successful evaluations (each architecture at its longest training; one per point), fastest first."""
    latest: dict[str, Evaluation] = {}
    for evaluation in evaluations:
        known = latest.get(evaluation.hash)
        if evaluation.ok and _point(evaluation) is not None and (known is None or evaluation.fidelity >= known.fidelity):
            latest[evaluation.hash] = evaluation
    candidates = sorted(latest.values(), key=lambda e: e.index)
    points = [_point(e) for e in candidates]
    fronts = non_dominated_sort(points)  # type: ignore[arg-type]
    unique: dict[tuple[float, float], Evaluation] = {}
    for i in fronts[0] if fronts else []:
        unique.setdefault(points[i], candidates[i])  # type: ignore[arg-type]  # equal points: the first evaluated
    return sorted(unique.values(), key=lambda e: (_point(e), e.index))


def choose(front: Sequence[Evaluation], best: Evaluation | None, limit: int, targets: Sequence[float] = ()) -> list[Evaluation]:
    """At most ``limit`` front members, fastest first: ``best`` (handed over in any case), the fastest, the most
    accurate predicted under each target, then members evenly spread over the rest of the front."""
    chosen: list[Evaluation] = [best] if best is not None else []

    def add(evaluation: Evaluation | None) -> None:
        if evaluation is not None and len(chosen) < limit and all(c.hash != evaluation.hash for c in chosen):
            chosen.append(evaluation)

    add(front[0] if front else None)
    for target in targets:
        under = [e for e in front if e.metrics[LATENCY_METRIC] <= target]
        add(max(under, key=lambda e: e.metrics["val_accuracy"]) if under else None)
    rest = [e for e in front if all(c.hash != e.hash for c in chosen)]
    room = limit - len(chosen)
    for k in range(min(room, len(rest))):  # evenly spread: distinct indices, as room <= len(rest) here
        add(rest[k * len(rest) // room] if room < len(rest) else rest[k])
    return sorted(chosen, key=lambda e: (_point(e) or (math.inf, 0.0), e.index))


class FrontWeights:
    """The weights of the current front's evaluations, one file each under ``<output>/front_weights/``."""

    def __init__(self, output: Path) -> None:
        self.folder = Path(output) / FRONT_DIR

    def path(self, hash_: str) -> Path:
        return self.folder / f"{hash_}.pt"

    def offer(self, evaluation: Evaluation, weights: dict[str, Any] | None, evaluations: Iterable[Evaluation]) -> None:
        """Keep ``evaluation``'s weights when it is on the front of ``evaluations`` (which include it); drop the weights
        of members it pushed off."""
        front = {e.hash for e in front_of(e for e in evaluations if e.hash == evaluation.hash or self.has(e.hash))}
        if evaluation.hash in front and weights is not None:
            files.save_tensors_atomic(self.path(evaluation.hash), {"hash": evaluation.hash, "weights": weights})
        for stored in self.folder.glob("*.pt") if self.folder.is_dir() else ():
            if stored.stem not in front:
                stored.unlink(missing_ok=True)

    def has(self, hash_: str) -> bool:
        return self.path(hash_).is_file()

    def weights(self, hash_: str) -> dict[str, Any] | None:
        """The kept weights of architecture ``hash_`` (None when none are kept)."""
        return files.load_weights(self.path(hash_), hash_)
