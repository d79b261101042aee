"""Multi-fidelity scheduling over epochs: successive halving (with ASHA's promotion rule) and hyperband brackets.

Rungs are epoch budgets ``min_epochs, min_epochs * eta, ...`` up to ``max_epochs``. A new architecture starts at
its bracket's first rung (successive halving: one bracket starting at rung 0; hyperband: bracket ``b`` starts
at rung ``b``, new architectures are dealt to brackets in turn). Whenever a generation is planned, every
evaluation in the top ``1/eta`` of its rung (within its bracket) that has not gone further is promoted to the
next rung, where it continues from its checkpoint (Li et al. 2020, "A System for Massively Parallel
Hyperparameter Tuning"). Promotions depend only on recorded results, never on arrival order, so a resumed
search plans the same generations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rungs:
    """The epoch budgets of a multi-fidelity search and its brackets."""

    min_epochs: int
    max_epochs: int
    eta: int = 3
    schedule: str = "halving"  # or "hyperband"

    @property
    def epochs(self) -> list[int]:
        """Epochs of each rung, increasing, the last one ``max_epochs``."""
        rungs, epochs = [], self.min_epochs
        while epochs < self.max_epochs:
            rungs.append(epochs)
            epochs *= self.eta
        return [*rungs, self.max_epochs]

    @property
    def brackets(self) -> int:
        return len(self.epochs) if self.schedule == "hyperband" else 1

    def bracket_of(self, ordinal: int) -> int:
        """The bracket of the ``ordinal``-th new architecture (0-based): its first rung is the bracket's number."""
        return ordinal % self.brackets

    def rung_of(self, epochs: int) -> int:
        return self.epochs.index(epochs)

    def planned_evaluations(self, new: int) -> int:
        """Evaluations a search of ``new`` architectures makes when every rung is full (for progress displays)."""
        total = 0
        for bracket in range(self.brackets):
            count = len(range(bracket, new, self.brackets))
            for _ in self.epochs[bracket:]:
                total += count
                count //= self.eta
        return total


@dataclass(frozen=True)
class RungResult:
    """One finished (or, with ``score`` None, failed) evaluation of an architecture at a rung."""

    hash: str
    bracket: int
    epochs: int
    score: tuple[float, ...] | None  # larger is better; None for a failed evaluation


def promotions(rungs: Rungs, evaluations: Sequence[RungResult], pending: Iterable[tuple[str, int]] = ()) -> list[RungResult]:
    """The evaluations to continue at their next rung now: the top ``1/eta`` of each rung not yet promoted.

    ``pending`` holds ``(hash, epochs)`` evaluations already planned. Higher rungs come first, then better scores.
    """
    epochs = rungs.epochs
    done = {(e.hash, e.epochs) for e in evaluations} | set(pending)
    chosen: list[RungResult] = []
    for rung in range(len(epochs) - 2, -1, -1):
        for bracket in range(rungs.brackets):
            at_rung = [e for e in evaluations if e.bracket == bracket and e.epochs == epochs[rung]]
            ranked = sorted((e for e in at_rung if e.score is not None), key=lambda e: e.score, reverse=True)
            for evaluation in ranked[: len(at_rung) // rungs.eta]:
                if (evaluation.hash, epochs[rung + 1]) not in done:
                    chosen.append(evaluation)
    return chosen
