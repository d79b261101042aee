"""Evaluators that answer a candidate's metrics without training: tabular benchmarks (registered as ``table``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_core.genome import Genome

DEFAULT_SELECT_METRIC = "val_acc_200"
DEFAULT_REPORT_METRIC = "test_acc_200"


class TableError(ValueError):
    """The table file is unreadable, lacks a column, or lacks an architecture."""


@dataclass(frozen=True)
class TableEvaluator:
    """Looks candidates up in a JSON table ``{architecture string: {column: value}}``.

    Selection uses ``select_metric`` only; ``report_metric`` is reported, never used to choose.
    The space must map genomes to the table's keys (``space.arch_string``).
    """

    path: Path
    rows: dict[str, dict[str, Any]]
    version: str
    select_metric: str = DEFAULT_SELECT_METRIC
    report_metric: str = DEFAULT_REPORT_METRIC

    @classmethod
    def load(
        cls, path: Path | str, select_metric: str = DEFAULT_SELECT_METRIC, report_metric: str = DEFAULT_REPORT_METRIC
    ) -> TableEvaluator:
        """Read and check the table at ``path`` (a TableError says what is wrong); ``version`` hashes its bytes."""
        path = Path(path)
        try:
            raw = path.read_bytes()
            rows = json.loads(raw)
        except OSError as exc:
            raise TableError(f"cannot read table {path}: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TableError(f"table {path} is not valid JSON") from None
        if not isinstance(rows, dict) or not rows or not all(isinstance(v, dict) for v in rows.values()):
            raise TableError(f"table {path} must map architecture strings to objects of metrics")
        first = next(iter(rows.values()))
        for column in (select_metric, report_metric):
            if column not in first:
                raise TableError(f"table {path} has no column '{column}' (columns: {', '.join(sorted(first))})")
            lacking = next((key for key, row in rows.items() if not isinstance(row.get(column), (int, float))), None)
            if lacking is not None:
                raise TableError(f"table {path}: architecture {lacking} has no number in column '{column}'")
        return cls(path, rows, hashlib.sha256(raw).hexdigest()[:32], select_metric, report_metric)

    def key(self, space: Any, genome: Genome) -> str:
        to_key = getattr(space, "arch_string", None)
        if to_key is None:
            raise TableError(f"the '{space.name}' space has no table keys; use a space like nb201")
        return to_key(genome)

    def evaluate(self, space: Any, genome: Genome) -> dict[str, float]:
        """The row of ``genome`` with ``val_accuracy`` = the select metric, ``test_accuracy`` = the report metric."""
        key = self.key(space, genome)
        row = self.rows.get(key)
        if row is None:
            raise TableError(f"architecture {key} is not in table {self.path}")
        metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics["val_accuracy"] = float(row[self.select_metric])
        metrics["test_accuracy"] = float(row[self.report_metric])
        return metrics

    def best(self) -> tuple[str, dict[str, Any]]:
        """The table's best architecture by the select metric (for benchmarks)."""
        return max(self.rows.items(), key=lambda kv: kv[1][self.select_metric])
