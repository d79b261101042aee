"""TableEvaluator: loading JSON tables, looking genomes up, versions, errors, the best row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from nas_core.evaluation.table import DEFAULT_REPORT_METRIC, DEFAULT_SELECT_METRIC, TableError, TableEvaluator
from nas_core.spaces import create_space
from nas_core.spaces.nb201 import NB201_OPS, NB201Space, cell_to_genome, format_arch
from tests.conftest import REPO_ROOT

NONE, SKIP, C1, C3, POOL = NB201_OPS
SPACE = NB201Space()
REAL_TABLE = REPO_ROOT.parent / "shared" / "benchmarks" / "nb201_cifar10.json"

CELL_A = (C3, C3, C3, SKIP, C3, C3)
CELL_B = (NONE, SKIP, C1, C3, POOL, NONE)
CELL_C = (POOL,) * 6
CELL_MISSING = (C1,) * 6

ROWS = {
    format_arch(CELL_A): {"val_acc_200": 91.5, "test_acc_200": 94.0, "rank": 1},
    format_arch(CELL_B): {"val_acc_200": 92.25, "test_acc_200": 90.5, "rank": 3},
    format_arch(CELL_C): {"val_acc_200": 10.0, "test_acc_200": 93.0, "rank": 2},
}


def write_table(path: Path, rows, **dump_options) -> Path:
    path.write_text(json.dumps(rows, **dump_options))
    return path


@pytest.fixture
def table(tmp_path: Path) -> Path:
    return write_table(tmp_path / "table.json", ROWS)


def genome(cell):
    return cell_to_genome(cell)


# ---- lookups -------------------------------------------------------------------------------------


def test_defaults_are_the_nb201_columns():
    assert (DEFAULT_SELECT_METRIC, DEFAULT_REPORT_METRIC) == ("val_acc_200", "test_acc_200")


def test_evaluate_maps_a_genome_to_its_row(table):
    evaluator = TableEvaluator.load(table)
    assert evaluator.path == table
    assert (evaluator.select_metric, evaluator.report_metric) == ("val_acc_200", "test_acc_200")
    for cell, row in [(CELL_A, ROWS[format_arch(CELL_A)]), (CELL_B, ROWS[format_arch(CELL_B)])]:
        metrics = evaluator.evaluate(SPACE, genome(cell))
        assert metrics["val_accuracy"] == row["val_acc_200"]
        assert metrics["test_accuracy"] == row["test_acc_200"]
        assert metrics["val_acc_200"] == row["val_acc_200"]
        assert metrics["rank"] == row["rank"]
        assert all(isinstance(v, float) for v in metrics.values())


def test_evaluate_uses_the_exact_cell_not_its_isomorphism_class(tmp_path):
    # these two cells are the same architecture for the space, but tables key the exact string
    a, b = (NONE, C3, C3, C1, C3, POOL), (NONE, C3, POOL, C1, SKIP, POOL)
    assert SPACE.identity(genome(a)) == SPACE.identity(genome(b))
    path = write_table(
        tmp_path / "t.json",
        {format_arch(a): {"val_acc_200": 1, "test_acc_200": 2}, format_arch(b): {"val_acc_200": 3, "test_acc_200": 4}},
    )
    evaluator = TableEvaluator.load(path)
    assert evaluator.evaluate(SPACE, genome(a))["val_accuracy"] == 1.0
    assert evaluator.evaluate(SPACE, genome(b))["val_accuracy"] == 3.0


def test_evaluate_ignores_non_numeric_columns(tmp_path):
    rows = {format_arch(CELL_A): {"val_acc_200": 90, "test_acc_200": 91, "note": "best", "flag": True, "extra": None}}
    metrics = TableEvaluator.load(write_table(tmp_path / "t.json", rows)).evaluate(SPACE, genome(CELL_A))
    assert metrics == {"val_acc_200": 90.0, "test_acc_200": 91.0, "val_accuracy": 90.0, "test_accuracy": 91.0}


def test_custom_column_names(tmp_path):
    rows = {
        format_arch(CELL_A): {"valid@12": 50.0, "test@200": 93.0, "val_acc_200": 1.0},
        format_arch(CELL_B): {"valid@12": 60.0, "test@200": 92.0, "val_acc_200": 2.0},
    }
    path = write_table(tmp_path / "custom.json", rows)
    evaluator = TableEvaluator.load(path, select_metric="valid@12", report_metric="test@200")
    metrics = evaluator.evaluate(SPACE, genome(CELL_A))
    assert metrics["val_accuracy"] == 50.0
    assert metrics["test_accuracy"] == 93.0
    assert evaluator.best()[0] == format_arch(CELL_B)
    # the default select column may exist too; the chosen one wins
    assert TableEvaluator.load(path, report_metric="test@200").evaluate(SPACE, genome(CELL_A))["val_accuracy"] == 1.0


def test_a_string_path_works(table):
    assert TableEvaluator.load(str(table)).evaluate(SPACE, genome(CELL_C))["test_accuracy"] == 93.0


def test_a_joint_space_is_looked_up_by_its_architecture(table):
    joint = create_space("nb201", hparams={"lr": [0.1, 0.01], "optimizer": ["adam", "sgd"]})
    evaluator = TableEvaluator.load(table)
    rng = random.Random(0)
    for _ in range(5):
        g = joint.sample(rng)
        tagged = dataclasses.replace(genome(CELL_B), hparams=g.hparams)
        assert tagged.hparams
        assert evaluator.evaluate(joint, tagged)["val_accuracy"] == 92.25


# ---- versions ------------------------------------------------------------------------------------


def test_version_is_a_stable_hash_of_the_file_bytes(table, tmp_path):
    first = TableEvaluator.load(table).version
    assert isinstance(first, str) and len(first) >= 16
    assert TableEvaluator.load(table).version == first
    copy = tmp_path / "elsewhere" / "copy.json"
    copy.parent.mkdir()
    shutil.copy(table, copy)
    assert TableEvaluator.load(copy).version == first, "the version depends on the bytes, not the path"
    assert first == hashlib.sha256(table.read_bytes()).hexdigest()[: len(first)]


def test_a_changed_file_has_another_version(table):
    before = TableEvaluator.load(table).version
    changed = {k: dict(v) for k, v in ROWS.items()}
    changed[format_arch(CELL_C)]["test_acc_200"] = 93.01
    write_table(table, changed)
    after = TableEvaluator.load(table).version
    assert after != before
    write_table(table, ROWS, indent=2)  # same content, other bytes
    assert TableEvaluator.load(table).version not in (before, after)
    write_table(table, ROWS)
    assert TableEvaluator.load(table).version == before


# ---- errors --------------------------------------------------------------------------------------


def test_table_error_is_a_value_error():
    assert issubclass(TableError, ValueError)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "table.json"
    with pytest.raises(TableError, match="cannot read table") as excinfo:
        TableEvaluator.load(missing)
    assert str(missing) in str(excinfo.value)
    with pytest.raises(TableError, match="cannot read table"):
        TableEvaluator.load(tmp_path)  # a folder


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"a": 1', b"\x80\x81\xfe not text"])
def test_invalid_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TableError, match="not valid JSON") as excinfo:
        TableEvaluator.load(path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"val_acc_200": 1, "test_acc_200": 2}],
        {},
        "a table",
        42,
        {format_arch(CELL_A): 91.5},
        {format_arch(CELL_A): {"val_acc_200": 1, "test_acc_200": 2}, format_arch(CELL_B): [1, 2]},
    ],
)
def test_a_table_must_map_strings_to_objects(tmp_path, rows):
    path = write_table(tmp_path / "shape.json", rows)
    with pytest.raises(TableError, match="must map architecture strings to objects"):
        TableEvaluator.load(path)


def test_missing_select_column_lists_the_columns(tmp_path):
    path = write_table(tmp_path / "t.json", {format_arch(CELL_A): {"valid": 1, "test_acc_200": 2, "rank": 3}})
    with pytest.raises(TableError) as excinfo:
        TableEvaluator.load(path)
    message = str(excinfo.value)
    assert "'val_acc_200'" in message
    assert "rank, test_acc_200, valid" in message
    TableEvaluator.load(path, select_metric="valid")  # the column it does have


def test_missing_report_column_lists_the_columns(table):
    with pytest.raises(TableError) as excinfo:
        TableEvaluator.load(table, report_metric="test_acc_12")
    message = str(excinfo.value)
    assert "'test_acc_12'" in message
    assert "rank, test_acc_200, val_acc_200" in message
    with pytest.raises(TableError, match="'val_acc_12'"):
        TableEvaluator.load(table, select_metric="val_acc_12")


def test_a_column_missing_from_a_later_row_is_a_table_error(tmp_path):
    rows = {
        format_arch(CELL_A): {"val_acc_200": 1, "test_acc_200": 2},
        format_arch(CELL_B): {"test_acc_200": 3},
    }
    path = write_table(tmp_path / "t.json", rows)
    with pytest.raises(TableError, match="val_acc_200"):
        TableEvaluator.load(path).evaluate(SPACE, genome(CELL_B))


def test_an_architecture_not_in_the_table(table):
    evaluator = TableEvaluator.load(table)
    with pytest.raises(TableError, match="is not in table") as excinfo:
        evaluator.evaluate(SPACE, genome(CELL_MISSING))
    assert format_arch(CELL_MISSING) in str(excinfo.value)
    assert str(table) in str(excinfo.value)


@pytest.mark.parametrize("hparams", [None, {"lr": [0.1, 0.01]}])
def test_a_space_without_table_keys(table, hparams):
    space = create_space("image", hparams=hparams)
    evaluator = TableEvaluator.load(table)
    with pytest.raises(TableError, match="'image' space has no table keys"):
        evaluator.evaluate(space, space.sample(random.Random(0)))


# ---- best ----------------------------------------------------------------------------------------


def test_best_is_the_row_with_the_highest_select_column(table, tmp_path):
    key, row = TableEvaluator.load(table).best()
    assert key == format_arch(CELL_B)  # highest validation, although not the highest test accuracy
    assert row == ROWS[key]
    key, _ = TableEvaluator.load(table, select_metric="test_acc_200", report_metric="val_acc_200").best()
    assert key == format_arch(CELL_A)
    key, _ = TableEvaluator.load(table, select_metric="rank").best()
    assert key == format_arch(CELL_B)
    reordered = write_table(tmp_path / "reordered.json", dict(reversed(list(ROWS.items()))))
    assert TableEvaluator.load(reordered).best()[0] == format_arch(CELL_B)


def test_best_of_the_real_table():
    evaluator = TableEvaluator.load(REAL_TABLE)
    assert len(evaluator.rows) == 15625
    key, row = evaluator.best()
    assert row["val_acc_200"] == pytest.approx(91.61, abs=0.006)
    assert row["test_acc_200"] == pytest.approx(94.37, abs=0.006)
    metrics = evaluator.evaluate(SPACE, SPACE.from_arch_string(key))
    assert metrics["test_accuracy"] == max(r["test_acc_200"] for r in evaluator.rows.values())
