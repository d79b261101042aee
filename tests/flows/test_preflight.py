"""Check before start: unfit data, a read-only or full project and a full output folder are bad input (one line,
exit 2, nothing written), found before the Prefect flow starts. `nas search` runs in this process here: it stops
before the flow, so no search starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.cli import EXIT_USAGE, main
from flows.preflight import MIN_FREE_BYTES, NotWritable, Place, check_place, search_places
from nas_core.config import SearchConfig
from tests.conftest import make_project
from tests.flows.mounts import fill, make_read_only, tmpfs
from tests.nas_core.data.writers import write_unfit_datasets


def _one_line_error(capsys, args: list[str], expected: str) -> str:
    code = main(args)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == EXIT_USAGE, captured.out[-2000:] + err[-2000:]
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expected in err, err
    return err


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- where a search writes -----------------------------------------------------------------------------------------
def test_a_search_writes_its_data_dvc_mlflow_and_prefect_places(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    root = tmp_path.resolve()
    places = {p.path: p.what for p in search_places(SearchConfig(project_dir=tmp_path))}
    expected = [root, root / "data", root / "data" / "digits", root / "data.dvc", root / ".dvc", root / ".dvc-remote",
                root / "mlflow.db", root / "mlartifacts", tmp_path / "prefect"]  # fmt: skip
    assert set(expected) <= set(places), sorted(places)
    assert places[tmp_path / "prefect"] == "Prefect home (PREFECT_HOME)"

    monkeypatch.delenv("PREFECT_HOME")
    assert root / ".prefect" in {p.path for p in search_places(SearchConfig(project_dir=tmp_path))}


def test_a_table_search_prepares_no_data_and_a_tracking_server_has_no_local_store(tmp_path, monkeypatch):
    table = tmp_path / "bench.json"
    table.write_text("{}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    paths = {p.path for p in search_places(SearchConfig(project_dir=tmp_path, evaluator=f"table:{table}"))}
    assert not any("data" in p.name or "dvc" in p.name or "mlflow" in p.name for p in paths), paths

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere' / 'runs.db'}")
    places = {p.path: p for p in search_places(SearchConfig(project_dir=tmp_path))}
    assert places[tmp_path / "elsewhere" / "runs.db"].fix == "set MLFLOW_TRACKING_URI to a writable store"


def test_a_place_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "data").write_text("a file where the data folder goes")
    with pytest.raises(NotWritable, match=r"prepared data folder '.*data/digits' cannot be created: '.*data' is not a folder"):
        check_place(Place(tmp_path / "data" / "digits", "prepared data folder", "fix it"))
    check_place(Place(tmp_path / "new" / "deeper", "folder", "fix it"))  # missing, under a writable folder: fine
    assert not (tmp_path / "new").exists(), "checking writes nothing"


def test_read_only_and_full_file_systems_are_found(tmp_path):
    with tmpfs(tmp_path / "ro") as mount:
        make_read_only(mount)
        with pytest.raises(NotWritable, match=r"MLflow store '.*ro' is not writable \(read-only file system\); fix it"):
            check_place(Place(mount / "mlflow.db", "MLflow store", "fix it"))
    with tmpfs(tmp_path / "full", size="256k") as mount:
        check_place(Place(mount / "data", "prepared data folder", "fix it"))
        fill(mount)
        with pytest.raises(NotWritable, match=r"'.*full' is on a full file system \(0 KiB free\)"):
            check_place(Place(mount / "data", "prepared data folder", "fix it"))
    assert MIN_FREE_BYTES < 256 * 1024, "a small tmpfs passes the check: it can fill up during the search instead"


# ---- nas search: bad data is bad input -----------------------------------------------------------------------------
def test_unfit_data_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sources = tmp_path / "sources"
    sources.mkdir()
    bad = write_unfit_datasets(sources)
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    before = _listing(project)
    for dataset, message in bad.items():
        _one_line_error(capsys, ["search", "--dataset", dataset, "--budget", "2"], message)
        _one_line_error(capsys, ["prepare", "--dataset", dataset], message)
    assert _listing(project) == before, "no outputs/, data/, .dvc/ or mlflow.db"


def test_nas_prepare_needs_an_existing_writable_project(tmp_path, capsys):
    _one_line_error(capsys, ["prepare", "--project-dir", str(tmp_path / "nope")], "project folder")
    with tmpfs(tmp_path / "ro") as mount:
        make_read_only(mount)
        _one_line_error(capsys, ["prepare", "--project-dir", str(mount)], "is not writable (read-only file system)")


# ---- nas search: places that cannot be written ---------------------------------------------------------------------
def test_a_read_only_project_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with tmpfs(tmp_path / "project") as mount:
        make_project(mount)
        make_read_only(mount)
        expected = "is not writable (read-only file system); make it writable or pass another --project-dir"
        err = _one_line_error(capsys, ["search", "--project-dir", str(mount), "--output", str(tmp_path / "out")], expected)
        assert str(mount) in err
    assert not (tmp_path / "out").exists()


def test_a_full_project_or_output_folder_is_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with tmpfs(tmp_path / "full", size="256k") as mount:
        fill(mount)
        _one_line_error(capsys, ["search", "--project-dir", str(mount)], "is on a full file system")
        (tmp_path / "project").mkdir()
        out = mount / "out"
        _one_line_error(capsys, ["search", "--project-dir", str(tmp_path / "project"), "--output", str(out)],
                        f"output folder '{out}' is not writable (No space left on device)")  # fmt: skip
        assert os.listdir(mount) == ["filler"], "the output folder it made for the check is gone"
