"""Quality gates for CI (``--fail-under METRIC=VALUE``) and the Markdown summary of a search for a pull request."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_core.search.summary import SearchSummary

GATE_METRICS = ("val_accuracy", "val_f1", "test_accuracy", "test_f1")
"""Fields of the summary's best model a gate may name: higher is better for each of them."""
TABLE_METRICS = ("val_accuracy", "test_accuracy")
"""What a table evaluator reports (its select and report columns); it has no F1."""


class GateError(ValueError):
    """A gate that cannot be parsed; the message says what is wrong in one line."""


@dataclass(frozen=True)
class Gate:
    """The best candidate's ``metric`` must be at least ``threshold``."""

    metric: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}={self.threshold:g}"


@dataclass(frozen=True)
class GateCheck:
    """One gate checked against a search's summary; ``value`` is None when the search has no such value."""

    gate: Gate
    value: float | None

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value >= self.gate.threshold

    def describe(self) -> str:
        if self.value is None:
            return f"{self.gate.metric}: no value (no candidate finished) < {self.gate.threshold:g}"
        return f"{self.gate.metric} {self.value:.6g} {'>=' if self.passed else '<'} {self.gate.threshold:g}"


def parse_gate(text: str) -> Gate:
    """``"val_accuracy=0.97"`` -> ``Gate("val_accuracy", 0.97)``; :class:`GateError` for anything else."""
    metric, sep, value = text.partition("=")
    metric, value = metric.strip(), value.strip()
    if not sep or not metric or not value:
        raise GateError(f"--fail-under '{text}' is not METRIC=VALUE (e.g. val_accuracy=0.97)")
    if metric not in GATE_METRICS:
        raise GateError(f"--fail-under '{text}': unknown metric '{metric}'; choose from {', '.join(GATE_METRICS)}")
    try:
        threshold = float(value)
    except ValueError:
        raise GateError(f"--fail-under '{text}': '{value}' is not a number") from None
    if not math.isfinite(threshold):
        raise GateError(f"--fail-under '{text}': the threshold must be a finite number")
    return Gate(metric, threshold)


def parse_gates(texts: list[str] | None) -> list[Gate]:
    """Every ``--fail-under`` given (several are all required to pass)."""
    return [parse_gate(text) for text in texts or []]


def check_applicable(gates: list[Gate], table_evaluator: bool) -> None:
    """Refuse, before searching, a gate this kind of search can never pass or fail honestly: a metric it never
    reports (a table has no F1), or a trained search's threshold outside 0..1 (its metrics are fractions)."""
    for gate in gates:
        if table_evaluator and gate.metric not in TABLE_METRICS:
            raise GateError(f"--fail-under {gate}: a table evaluator reports only {' and '.join(TABLE_METRICS)}")
        if not table_evaluator and not 0 <= gate.threshold <= 1:
            raise GateError(f"--fail-under {gate}: {gate.metric} is a fraction from 0 to 1 (e.g. {gate.metric}=0.97)")


def check_gates(gates: list[Gate], summary: SearchSummary) -> list[GateCheck]:
    """Each gate against the best model of ``summary`` (every gate misses when no candidate finished)."""
    return [GateCheck(gate, summary.best.metric(gate.metric) if summary.best else None) for gate in gates]


def failure_line(checks: list[GateCheck]) -> str:
    """One line naming every missed gate with its value and threshold."""
    return "gate failed: " + "; ".join(c.describe() for c in checks if not c.passed)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _path(value: str | None, base: Path | None) -> str:
    if not value:
        return "none"
    if base is not None:
        relative = os.path.relpath(value, base)
        if not relative.startswith(".."):
            return f"`{relative}`"
    return f"`{value}`"


def _gate_cell(checks: list[GateCheck] | None) -> str:
    if not checks:
        return "none (no --fail-under)"
    verdict = "passed" if all(c.passed for c in checks) else "**failed**"
    return f"{verdict}: " + ", ".join(c.describe() for c in checks)


def markdown_summary(summary: SearchSummary, checks: list[GateCheck] | None = None, base: Path | None = None) -> str:
    """A short Markdown table of a search (fit for a pull-request comment); paths are shown relative to ``base``."""
    best, ok = summary.best, summary.ok_candidates
    title = "NAS search"
    if checks:
        title += ": gate passed" if all(c.passed for c in checks) else ": gate failed"
    rows = [
        ("search", f"`{summary.search_id}`"),
        ("dataset", f"{summary.dataset['name']} (version `{summary.dataset['version']}`)"),
        ("strategy", f"{summary.strategy} (budget {summary.budget}, seed {summary.seed})"),
        ("candidates", f"{ok} ok, {len(summary.candidates) - ok} failed"),
    ]
    if best:
        rows += [
            ("best val accuracy", f"{best.val_accuracy:.4f}"),
            ("best test accuracy", f"{best.test_accuracy:.4f}" if best.test_accuracy is not None else "none"),
            ("params", f"{best.params:,}"),
            ("FLOPs", f"{best.flops:,}"),
            ("ONNX model", _path(best.onnx_path, base)),
        ]
    else:
        rows.append(("best", "none: every candidate failed"))
    rows += [
        ("MLflow run", f"`{summary.mlflow_run_id}` (experiment `{summary.mlflow_experiment}`)"),
        ("gate", _gate_cell(checks)),
    ]
    lines = [f"### {title}", "", "| | |", "| --- | --- |", *(f"| {name} | {_cell(value)} |" for name, value in rows)]
    return "\n".join(lines) + "\n"


def write_markdown_summary(
    path: Path, summary: SearchSummary, checks: list[GateCheck] | None = None, base: Path | None = None
) -> Path:
    """Write :func:`markdown_summary` to ``path`` (its folder is created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_summary(summary, checks, base))
    return path
