"""``summary.json``: the finished search as one typed, versioned record (schema: docs/summary-schema.md).

Written by the search and read back by ``nas export``, ``nas report``, the CLI table, the CI gate and its Markdown
summary, always through :class:`SearchSummary`. ``format`` is bumped whenever a field changes meaning or goes away.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_core.search.checkpoint import write_json_atomic

if TYPE_CHECKING:  # annotations only: reading a summary must not import torch
    from nas_core.search.ports import ExportOutcome
    from nas_core.search.records import Evaluation

SUMMARY_FORMAT = 1
SUMMARY_FILE = "summary.json"


class SummaryError(ValueError):
    """A summary.json that is missing, damaged or of a format this version cannot read."""


@dataclass(frozen=True)
class BestModel:
    """The search's best architecture and the model exported from it."""

    hash: str
    mlflow_run_id: str
    fidelity: int
    val_accuracy: float
    val_f1: float | None
    test_accuracy: float | None  # of the exported model: the final model's when it was retrained
    test_f1: float | None
    candidate_test_accuracy: float | None
    final_run_id: str | None
    params: int
    flops: int
    genome: dict[str, Any]
    onnx_path: str | None = None
    onnx_max_abs_diff: float | None = None
    handoff_path: str | None = None
    registry: dict[str, Any] | None = None
    model_error: str | None = None  # why a trained search has no exported model (None when it has one, or trains none)
    reused_from: str | None = None  # the earlier run whose result it is, when this search did not train it
    quantization: dict[str, Any] | None = None  # --quantize int8: kept or why not, accuracy and latency before and after

    @classmethod
    def of(
        cls,
        best: Evaluation,
        exported: dict[str, float],
        final_run_id: str | None,
        outcome: ExportOutcome | None,
        model_error: str | None = None,
    ) -> BestModel:
        """The best evaluation, the metrics of the model exported from it, and where the export went (or why not)."""
        return cls(
            hash=best.hash, mlflow_run_id=best.mlflow_run_id, fidelity=best.fidelity, val_accuracy=best.metrics["val_accuracy"],
            val_f1=best.metrics.get("val_f1"), test_accuracy=exported.get("test_accuracy"), test_f1=exported.get("test_f1"),
            candidate_test_accuracy=best.metrics.get("test_accuracy"), final_run_id=final_run_id,
            params=int(best.metrics["params"]), flops=int(best.metrics["flops"]), genome=best.genome.to_dict(),
            onnx_path=str(outcome.path) if outcome else None, onnx_max_abs_diff=outcome.max_abs_diff if outcome else None,
            handoff_path=str(outcome.handoff_path) if outcome and outcome.handoff_path else None,
            registry=outcome.registration if outcome else None, model_error=model_error,
            reused_from=best.reused_from or None, quantization=outcome.quantization if outcome else None,
        )  # fmt: skip

    def metric(self, name: str) -> float | None:
        """A numeric field by name (for gates)."""
        value = getattr(self, name, None)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class SearchSummary:
    """Everything a finished search reports."""

    search_id: str
    mlflow_tracking_uri: str
    mlflow_experiment: str
    mlflow_run_id: str
    mlflow_ui: str
    output: str
    dataset: dict[str, str]  # name, version
    strategy: str
    budget: int
    seed: int
    fidelity: dict[str, Any]
    proxy: dict[str, Any] | None
    final: dict[str, Any] | None
    candidates: tuple[dict[str, Any], ...]
    best: BestModel | None
    elapsed_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None  # why it stopped proposing: budget, time or space exhausted
    time_budget_seconds: float | None = None
    spent_seconds: float = 0.0  # the search's time until its candidates ended, earlier processes' included
    device_seconds: float = 0.0  # wall seconds of the evaluations it trained (candidates, final and recovery)
    warm_start: dict[str, Any] | None = None  # what it took from earlier searches (WarmStart)
    gpus: dict[str, Any] | None = None  # busy share per GPU; with candidates_per_gpu auto, the counts tried
    pareto: tuple[dict[str, Any], ...] | None = None  # export pareto: the handed-over front, fastest first
    format: int = SUMMARY_FORMAT

    @property
    def ok_candidates(self) -> int:
        return sum(c["status"] == "ok" for c in self.candidates)

    @property
    def folder(self) -> Path:
        return Path(self.output)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["candidates"] = list(self.candidates)
        data["pareto"] = list(self.pareto) if self.pareto is not None else None
        return {"format": self.format, **{k: v for k, v in data.items() if k != "format"}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSummary:
        if not isinstance(data, dict) or data.get("format", SUMMARY_FORMAT) != SUMMARY_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise SummaryError(f"summary format {found} is not {SUMMARY_FORMAT}, the one this version reads")
        try:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
            best = data.get("best")
            values["best"] = BestModel(**best) if best else None
            values["candidates"] = tuple(data.get("candidates", ()))
            values["pareto"] = tuple(data["pareto"]) if data.get("pareto") is not None else None
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise SummaryError(f"summary.json lacks or misnames a field: {exc}") from None

    def write(self, folder: Path) -> Path:
        path = Path(folder) / SUMMARY_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, folder: Path) -> SearchSummary:
        path = Path(folder) / SUMMARY_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SummaryError(f"{path} does not exist: the search has not finished") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise SummaryError(f"cannot read {path}: {exc}") from None
