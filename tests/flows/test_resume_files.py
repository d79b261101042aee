"""`nas search --resume` names a damaged checkpoint file in one line (exit 2) before anything starts; a search that
finished without its model exits 1 and `nas export` says why."""

from __future__ import annotations

import json
import shutil

import pytest

from flows import cli, running
from flows.cli import EXIT_FAILED, EXIT_USAGE, main
from nas_core.search import checkpoint as files
from nas_core.search.ports import MemoryTracker, ModelExportError
from nas_core.search.summary import SearchSummary
from tests.nas_core.search.test_checkpoint import KeepingExporter, _search


@pytest.fixture(scope="module")
def finished_without_model(tmp_path_factory, single_torch_thread):
    """A search whose exporter rejected the model (it finished, with the reason in summary.json)."""
    root = tmp_path_factory.mktemp("no-model")
    _search(root, MemoryTracker(), KeepingExporter(ModelExportError("onnx.checker rejected the model: bad node"))).run()
    return root


@pytest.fixture
def unfinished(finished_without_model, tmp_path):
    """The same search as if it had been killed before writing its summary."""
    root = tmp_path / "root"
    shutil.copytree(finished_without_model, root)
    (root / "out" / "summary.json").unlink()
    return root / "out"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda path: path.write_text(""), "(empty)"),
        (lambda path: path.write_text(path.read_text()[:100]), "not JSON"),
        (lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "finished": None})), "is not a list"),
    ],
    ids=["empty", "truncated", "wrong-type"],
)
def test_a_damaged_state_json_is_one_line_and_exit_2_before_anything_starts(unfinished, capsys, monkeypatch, damage, words):
    started = []
    monkeypatch.setattr(cli, "run_search", lambda *args, **kwargs: started.append(args))  # the search itself
    path = unfinished / files.STATE_FILE
    damage(path)
    damaged = path.read_bytes()
    assert main(["search", "--resume", str(unfinished), "--quiet"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(path) in err and words in err and "start a new search" in err
    assert started == [] and path.read_bytes() == damaged and not (unfinished / "summary.json").exists()


def test_a_damaged_search_json_is_one_line_and_exit_2(unfinished, capsys):
    path = unfinished / files.SEARCH_FILE
    path.write_text(path.read_text()[:50])
    assert main(["search", "--resume", str(unfinished), "--quiet"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot read {path}" in err


def test_damaged_weights_are_announced_then_the_resume_goes_on(unfinished, capsys, monkeypatch):
    class Started(BaseException):  # past main()'s one-line handler of errors
        pass

    def stop(*args, **kwargs):
        raise Started

    monkeypatch.setattr(cli, "run_search", stop)
    weights = unfinished / files.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(Started):
        main(["search", "--resume", str(unfinished), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"warning: {weights} is damaged") and "will be retrained from its seed" in err
    assert (unfinished / f"{files.WEIGHTS_FILE}.damaged").is_file() and not weights.exists()


def test_a_search_without_its_model_exits_1_saying_why(finished_without_model, capsys):
    summary = SearchSummary.read(finished_without_model / "out")
    assert summary.best is not None and summary.best.onnx_path is None
    assert running.gate_and_markdown(summary, [], None) == EXIT_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no model: export failed: onnx.checker rejected the model: bad node" in err and "best.genome" in err


def test_nas_export_of_a_search_without_its_model_says_the_real_reason(finished_without_model, tmp_path, capsys):
    assert main(["export", str(finished_without_model / "out"), "--output", str(tmp_path / "bundle")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "export failed: onnx.checker rejected the model" in err
    assert "benchmark tables" not in err and not (tmp_path / "bundle").exists()
