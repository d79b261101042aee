"""Every row of docs/bad-input.md, run in-process in a fresh project: its exit code, one `error:` line starting
with the row's message, and nothing written (no output folder, no mlflow.db, no DVC change)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from flows.cli import main
from tests.conftest import make_project
from tests.docs.bad_inputs import MAKERS

PAGE = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
COLUMNS = ["input", "example", "what is checked", "when", "message (start)", "exit"]
PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Row:
    line: int
    example: str
    message: str
    exit_code: int


def _code(cell: str) -> str:
    match = re.fullmatch(r"`(.*)`", cell.strip())
    assert match, f"expected `code` in {cell!r}"
    return match.group(1)


def _rows() -> list[Row]:
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| input |"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == COLUMNS
    rows = []
    for number, line in enumerate(lines[header + 2 :], start=header + 3):
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == len(COLUMNS), f"line {number}: {line}"
        rows.append(Row(number, _code(cells[1]), _code(cells[4]), int(cells[5])))
    return rows


ROWS = _rows()


def test_the_table_has_rows_for_every_kind_of_input():
    kinds = {" ".join(shlex.split(row.example)[:3]) for row in ROWS}
    assert len(ROWS) >= 40
    for needle in ("--config", "nas validate", "--init-genome", "--output", "--resume", "--fail-under", "--project-dir"):
        assert any(needle in kind or needle in row.example for kind in kinds for row in ROWS), needle


def test_every_placeholder_has_a_maker():
    used = {name for row in ROWS for text in (row.example, row.message) for name in PLACEHOLDER.findall(text)}
    assert used and used <= set(MAKERS) | {"lr"}, used - set(MAKERS)


def _fill(text: str, paths: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: paths.get(m.group(1), m.group(0)), text)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: f"line{row.line}")
def test_bad_input_row(row: Row, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = {name: str(make(inputs)) for name, make in MAKERS.items() if f"{{{name}}}" in row.example + row.message}
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    before = sorted(p.name for p in project.iterdir())
    argv = [_fill(arg, paths) for arg in shlex.split(row.example)]
    assert argv[0] == "nas"

    code = main(argv[1:])

    err = capsys.readouterr().err.strip()
    assert code == row.exit_code, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: " + _fill(row.message, paths)), err
    assert sorted(p.name for p in project.iterdir()) == before  # no outputs/, mlflow.db, .prefect or DVC files
