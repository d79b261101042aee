"""The pieces the loop is given to decide what to evaluate and for how long: the fidelity schedule (one budget, or
multi-fidelity rungs with promotions), zero-cost proxy screening, and median early stopping."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nas_core.evaluation.fidelity import RungResult, Rungs, promotions
from nas_core.evaluation.proxies import rank_correlation
from nas_core.genome import Genome
from nas_core.search.records import PROMOTION, Evaluation, PlannedEvaluation
from nas_core.strategies import Proposal

EARLY_STOP_CURVES = 3  # fewest earlier curves reaching an epoch before median early stopping judges that epoch


@dataclass(frozen=True)
class SingleFidelity:
    """Every architecture is trained for ``epochs`` (its genome's own ``epochs`` hyperparameter wins)."""

    epochs: int
    schedule_epochs: None = None

    def planned_evaluations(self, budget: int) -> int:
        return budget

    def start(self, ordinal: int, default_epochs: int) -> tuple[int, int]:
        """(fidelity, bracket) of the ``ordinal``-th new architecture."""
        return default_epochs, 0

    def promotions(self, evaluations: Sequence[Evaluation]) -> list[tuple[Evaluation, int]]:
        return []

    def tags(self, planned: PlannedEvaluation) -> dict[str, Any]:
        return {}

    def keep_state(self, epochs: int) -> bool:
        return False

    def summary(self) -> dict[str, Any]:
        return {"mode": "none", "epochs": self.epochs}


@dataclass(frozen=True)
class MultiFidelity:
    """Successive halving (or hyperband) over epochs: new architectures start at their bracket's first rung; the
    best ``1/eta`` of each rung continue, from their checkpoint, at the next one."""

    rungs: Rungs

    @property
    def schedule_epochs(self) -> int:
        return self.rungs.max_epochs

    def planned_evaluations(self, budget: int) -> int:
        return self.rungs.planned_evaluations(budget)

    def start(self, ordinal: int, default_epochs: int) -> tuple[int, int]:
        bracket = self.rungs.bracket_of(ordinal)
        return self.rungs.epochs[bracket], bracket

    def promotions(self, evaluations: Sequence[Evaluation]) -> list[tuple[Evaluation, int]]:
        """(evaluation, next rung's epochs) to continue now; they depend only on recorded results."""
        ordered = sorted(evaluations, key=lambda e: e.index)
        results = [RungResult(e.hash, e.bracket, e.fidelity, e.selection_key() if e.ok else None) for e in ordered]
        by_identity = {(e.hash, e.fidelity): e for e in ordered}
        chosen = [by_identity[(r.hash, r.epochs)] for r in promotions(self.rungs, results)]
        return [(e, self.rungs.epochs[self.rungs.rung_of(e.fidelity) + 1]) for e in chosen]

    def tags(self, planned: PlannedEvaluation) -> dict[str, Any]:
        if planned.fidelity not in self.rungs.epochs:
            return {}
        tags: dict[str, Any] = {"bracket": planned.bracket, "rung": self.rungs.rung_of(planned.fidelity)}
        if planned.promoted_from:
            tags.update(promoted_from=planned.promoted_from, resumed_from_epoch=planned.from_fidelity)
        return tags

    def keep_state(self, epochs: int) -> bool:
        return epochs < self.rungs.max_epochs

    def summary(self) -> dict[str, Any]:
        return {"mode": "epochs", "schedule": self.rungs.schedule, "rungs": self.rungs.epochs, "eta": self.rungs.eta}


FidelitySchedule = SingleFidelity | MultiFidelity


@dataclass(frozen=True)
class ProxyScreen:
    """Score proposals with a zero-cost proxy at initialisation; train only the best-scoring ``keep`` share."""

    name: str
    keep: float = 1.0

    def ask_count(self, count: int) -> int:
        return math.ceil(count / self.keep)

    def screen(
        self, proposals: Sequence[Proposal], count: int, score: Callable[[Genome], float]
    ) -> tuple[list[tuple[Proposal, float]], list[tuple[Proposal, float]]]:
        """(kept, screened out): the ``count`` best-scoring proposals in proposal order, and the others."""
        scores = [_safe_score(score, p.genome) for p in proposals]
        ranked = sorted(range(len(proposals)), key=lambda i: -scores[i] if math.isfinite(scores[i]) else math.inf)
        kept = sorted(ranked[:count])
        return [(proposals[i], scores[i]) for i in kept], [(proposals[i], scores[i]) for i in ranked[count:]]

    def summary(self, evaluations: Sequence[Evaluation], screened_out: int) -> dict[str, Any]:
        """The proxy, its rank correlation with validation accuracy on this search's data, and what it screened."""
        first = [e for e in evaluations if e.ok and e.origin != PROMOTION and e.proxy is not None]
        return {
            "name": self.name,
            "keep": self.keep,
            "rank_correlation": rank_correlation([e.proxy for e in first], [e.metrics["val_accuracy"] for e in first]),
            "pairs": len(first),
            "screened_out": screened_out,
        }


def _safe_score(score: Callable[[Genome], float], genome: Genome) -> float:
    try:
        return score(genome)
    except Exception:  # a genome that cannot be built or scored ranks last; training reports why it fails
        return -math.inf


@dataclass(frozen=True)
class MedianStopping:
    """Stop a candidate whose best validation accuracy after an epoch is below the median of earlier generations'
    curves at that epoch, from a quarter of the epochs on (Golovin et al. 2017)."""

    epochs: int

    def thresholds(self, evaluations: Sequence[Evaluation], generation: int) -> tuple[float | None, ...]:
        """Per epoch, the median of earlier generations' curves (None in the grace period or with too few curves).

        Only earlier generations count, so a generation's requests (and a resumed search's) get the same thresholds.
        """
        curves = [e.curve for e in evaluations if e.ok and e.curve and e.generation < generation]
        grace = max(1, self.epochs // 4)
        thresholds: list[float | None] = []
        for epoch in range(1, self.epochs + 1):
            values = [c[epoch - 1] for c in curves if len(c) >= epoch]
            thresholds.append(statistics.median(values) if epoch > grace and len(values) >= EARLY_STOP_CURVES else None)
        return tuple(thresholds)
