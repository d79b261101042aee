"""The contract of every registered evaluator: it evaluates a genome of a space it supports, deterministically, and
returns finite validation and test metrics; unknown names and genomes it cannot answer are clear errors."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nas_core.data.preparation import PreparedData
from nas_core.evaluation.evaluators import EVALUATORS, TrainEvaluator, create_evaluator, list_evaluators
from nas_core.evaluation.table import TableError, TableEvaluator
from nas_core.evaluation.training import TrainConfig
from nas_core.spaces import create_space
from nas_core.spaces.nb201 import NB201_OPS, cell_to_genome, format_arch

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CELLS = [(NB201_OPS[i % 5],) * 6 for i in range(3)]


def tiny_data() -> PreparedData:
    """24 images of 1 x 8 x 8 per split, two classes told apart by brightness."""
    rng = np.random.default_rng(0)
    y = {s: np.arange(24) % 2 for s in ("train", "val", "test")}
    x = {s: (rng.random((24, 1, 8, 8)) * 0.5 + 0.5 * v[:, None, None, None]).astype(np.float32) for s, v in y.items()}
    return PreparedData("tiny", x, {s: v.astype(np.int64) for s, v in y.items()}, (1, 8, 8), 2, ["dark", "light"], [0.5], [0.3])


def _train(tmp_path: Path) -> tuple[dict[str, Any], Any, Any]:
    space = create_space("image")
    options = {"data": tiny_data(), "config": TrainConfig(epochs=1, batch_size=8, seed=3)}
    return options, space, space.sample(random.Random(1))


def _table(tmp_path: Path) -> tuple[dict[str, Any], Any, Any]:
    rows = {format_arch(cell): {"val": 80.0 + i, "test": 70.0 + i, "extra": i} for i, cell in enumerate(CELLS)}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(rows))
    return {"path": path, "select": "val", "report": "test"}, create_space("nb201"), cell_to_genome(CELLS[1])


# evaluator name -> (options for create_evaluator, a space it supports, a genome of that space), built under tmp_path
SETUPS: dict[str, Callable[[Path], tuple[dict[str, Any], Any, Any]]] = {"train": _train, "table": _table}


@pytest.fixture(params=list_evaluators())
def setup(request, tmp_path):
    if request.param not in SETUPS:
        pytest.fail(f"evaluator '{request.param}' has no contract setup: add one to SETUPS")
    return (request.param, *SETUPS[request.param](tmp_path))


def test_evaluates_a_genome_to_finite_val_and_test_metrics(setup):
    name, options, space, genome = setup
    metrics = create_evaluator(name, **options).evaluate(space, genome)
    assert {"val_accuracy", "test_accuracy"} <= set(metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics


def test_evaluation_is_deterministic(setup):
    name, options, space, genome = setup
    first = create_evaluator(name, **options).evaluate(space, genome)
    again = create_evaluator(name, **options).evaluate(space, genome)
    keep = ("val_accuracy", "test_accuracy", "val_loss", "params")
    assert {k: v for k, v in first.items() if k in keep} == {k: v for k, v in again.items() if k in keep}


def test_the_builtin_evaluators_are_the_config_values():
    assert list_evaluators()[:2] == ["train", "table"]
    assert EVALUATORS["train"] is TrainEvaluator
    with pytest.raises(ValueError, match=r"unknown evaluator 'nope' \(known: table, train\)"):
        create_evaluator("nope")


def test_table_evaluator_reports_the_chosen_columns_and_rejects_missing_architectures(tmp_path):
    options, space, genome = _table(tmp_path)
    evaluator = create_evaluator("table", **options)
    assert isinstance(evaluator, TableEvaluator)
    assert evaluator == TableEvaluator.load(options["path"], "val", "test")
    row = {"val": 81.0, "test": 71.0, "extra": 1.0}
    assert evaluator.evaluate(space, genome) == {**row, "val_accuracy": 81.0, "test_accuracy": 71.0}
    with pytest.raises(TableError, match="is not in table"):
        evaluator.evaluate(space, cell_to_genome((NB201_OPS[4],) * 6))


def test_train_evaluator_trains_for_the_configured_epochs(tmp_path):
    options, space, genome = _train(tmp_path)
    metrics = create_evaluator("train", **options).evaluate(space, genome)
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["params"] == space.cost(genome, (1, 8, 8), 2)["params"]
