"""The files a resume reads: each damaged one is named before anything starts; lost weights are trained again.

One tiny real search (the core loop, in memory, no tools) is stopped where a kill during export would stop it; each
test damages a copy of its output folder, then checks it or resumes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nas_core.config import SearchConfig
from nas_core.data.store import LocalDataStore
from nas_core.evaluation.worker import evaluate
from nas_core.search import checkpoint as files
from nas_core.search.final import RECOVERY_ROLE
from nas_core.search.loop import Search
from nas_core.search.ports import ExportOutcome, MemoryTracker, ModelExportError
from nas_core.search.proposing import Proposer
from nas_core.search.records import EvaluationResult


class KeepingExporter:
    """Keeps the exported model's weights instead of writing ONNX; raises ``error`` when given one."""

    def __init__(self, error: Exception | None = None) -> None:
        self.weights: dict[str, torch.Tensor] | None = None
        self.error = error

    def export(self, request, tracker) -> ExportOutcome:  # noqa: ANN001 - an ExportRequest and a Tracker
        if self.error is not None:
            raise self.error
        self.weights = {k: v.clone() for k, v in request.model.state_dict().items()}
        return ExportOutcome(request.output / "model.onnx", 0.0, 1)


def _config(root: Path, **settings) -> SearchConfig:
    values = {"project_dir": root, "output": root / "out", "budget": 2, "population": 2, "epochs": 1, "workers": 1}
    return SearchConfig(**{**values, **settings})


def _search(root: Path, tracker: MemoryTracker, exporter=None, resume: bool = False, **settings) -> Search:
    store = LocalDataStore(root / "data")
    return Search(_config(root, **settings), store, search_id="s", resume=resume, connect_tracker=lambda: tracker,
                  exporter=exporter)  # fmt: skip


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, single_torch_thread):
    """A search whose candidates all finished, stopped before its export (as a kill there leaves it); its tracker."""
    root = tmp_path_factory.mktemp("stopped")
    tracker = MemoryTracker()
    search = _search(root, tracker)
    search.prepare()
    while requests := search.propose():
        for request in requests:
            search.record(evaluate(request))
        search.select()
    return root, tracker, search.best(), {k: v.clone() for k, v in search.best_weights.items()}


@pytest.fixture
def copy(stopped, tmp_path):
    """A copy of the stopped search's folder (data and output), with the same tracker."""
    root, tracker, best, weights = stopped
    shutil.copytree(root, tmp_path / "root")
    return tmp_path / "root", tracker, best, weights


def _check(root: Path) -> list[str]:
    config = _config(root)
    return files.check_resume_files(root / "out", "s", True, Proposer(config, root / "out", resume=True).load_state)


def _damage_state(root: Path, change) -> Path:
    path = root / "out" / files.STATE_FILE
    state = json.loads(path.read_text())
    path.write_text(json.dumps(change(state)))
    return path


def test_an_intact_folder_passes_and_nothing_is_moved(copy):
    root = copy[0]
    before = sorted(p.name for p in (root / "out").iterdir())
    assert _check(root) == []
    assert sorted(p.name for p in (root / "out").iterdir()) == before


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda path: path.write_text(""), "(empty)"),
        (lambda path: path.write_text(path.read_text()[:200]), "not JSON"),
        (lambda path: path.write_text("[1, 2]"), "a JSON list, not an object"),
        (lambda path: path.write_bytes(b"\xff\xfe\x00garbage"), "not JSON"),
    ],
    ids=["empty", "truncated", "a-list", "binary"],
)
def test_an_unreadable_state_json_is_named_in_one_line(copy, damage, words):
    root = copy[0]
    path = root / "out" / files.STATE_FILE
    damage(path)
    with pytest.raises(files.ResumeError) as caught:
        _check(root)
    message = str(caught.value)
    assert str(path) in message and words in message and "start a new search" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda s: {k: v for k, v in s.items() if k != "finished"}, "'finished' missing"),
        (lambda s: {**s, "generation": "two"}, "'generation' is not an integer"),
        (lambda s: {**s, "in_flight": {}}, "'in_flight' is not a list"),
        (lambda s: {**s, "final": 3}, "'final' is not an object or null"),
        (lambda s: {**s, "finished": [{"index": 1}]}, "KeyError"),
        (lambda s: {**s, "finished": [1]}, "TypeError"),
        (lambda s: {**s, "finished": [{**s["finished"][0], "metrics": {"val_accuracy": "high"}}]}, "wrong value"),
        (lambda s: {**s, "finished": [{**s["finished"][0], "genome": {"nodes": 1}}]}, "GenomeError"),
        (lambda s: {**s, "strategy": {"name": "evolution"}}, "KeyError"),
        (lambda s: {**s, "strategy": {**s["strategy"], "name": "bo"}}, "cannot be loaded"),
        (lambda s: {**s, "search_id": "another"}, "belongs to search another"),
        (lambda s: {k: v for k, v in s.items() if k != "format"}, "no checkpoint format"),
    ],
    ids=["no-finished", "generation-text", "in-flight-object", "final-number", "record-keys", "record-number",
         "metric-text", "bad-genome", "strategy-keys", "other-strategy", "other-search", "no-format"],
)  # fmt: skip
def test_a_state_json_of_the_wrong_shape_is_named_in_one_line(copy, change, words):
    root = copy[0]
    path = _damage_state(root, change)
    with pytest.raises(files.ResumeError) as caught:
        _check(root)
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message


def test_a_state_json_of_another_format_says_so(copy):
    root = copy[0]
    _damage_state(root, lambda s: {**s, "format": 99})
    with pytest.raises(files.ResumeError, match="format 99, not 3"):
        _check(root)


@pytest.mark.parametrize("name", [files.WEIGHTS_FILE, files.FINAL_WEIGHTS_FILE])
def test_damaged_weights_are_moved_aside_and_the_retraining_is_announced(copy, name):
    root = copy[0]
    path = root / "out" / name
    path.write_bytes(b"PK\x03\x04 truncated")
    notes = _check(root)
    assert len(notes) == 1 and str(path) in notes[0] and "damaged" in notes[0]
    assert ("will be retrained" if name == files.WEIGHTS_FILE else "will run again") in notes[0]
    assert not path.exists() and (root / "out" / f"{name}.damaged").is_file()


def test_missing_best_weights_are_announced(copy):
    root, _, best, _ = copy
    (root / "out" / files.WEIGHTS_FILE).unlink()
    notes = _check(root)
    assert len(notes) == 1 and "is missing" in notes[0] and best.hash[:12] in notes[0] and "1 epochs" in notes[0]


def test_missing_best_weights_need_no_retraining_when_the_final_model_stands_in(copy):
    root, _, best, weights = copy
    final = {"mlflow_run_id": "f", "source_run_id": best.mlflow_run_id, "source_hash": best.hash, "epochs": 1,
             "trained_on": "train+val", "status": "ok", "reason": ""}  # fmt: skip
    _damage_state(root, lambda s: {**s, "final": final})
    files.save_tensors_atomic(root / "out" / files.FINAL_WEIGHTS_FILE, {"hash": best.hash, "weights": weights})
    (root / "out" / files.WEIGHTS_FILE).unlink()
    assert _check(root) == []
    (root / "out" / files.WEIGHTS_FILE).write_bytes(b"broken")
    notes = _check(root)
    assert len(notes) == 1 and "the final model is exported instead" in notes[0]


def test_a_damaged_promotion_checkpoint_is_moved_aside(copy):
    root = copy[0]
    saved = root / "out" / files.CHECKPOINTS_DIR / "abc-e1.pt"
    saved.parent.mkdir()
    saved.write_bytes(b"\x80\x02truncated")
    intact = saved.with_name("def-e1.pt")
    files.save_tensors_atomic(intact, {"epoch": 1, "model": {}})
    notes = _check(root)
    assert len(notes) == 1 and str(saved) in notes[0] and "train from scratch" in notes[0]
    assert intact.is_file() and not saved.exists()


def test_half_written_files_of_a_killed_search_are_removed(tmp_path):
    (tmp_path / ".model.onnx.tmp").write_bytes(b"")
    (tmp_path / ".state.json.tmp").write_text("{")
    (tmp_path / "state.json").write_text("{}")
    removed = files.remove_partial_files(tmp_path)
    assert [p.name for p in removed] == [".model.onnx.tmp", ".state.json.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ---- resuming: the model is never lost ---------------------------------------------------------------------------
def _resume(root: Path, tracker: MemoryTracker, exporter, evaluate=None) -> Search:
    search = _search(root, tracker, exporter, resume=True)
    search.run(evaluate) if evaluate else search.run()
    return search


def _recovery_runs(tracker: MemoryTracker, before: set[str]) -> list:
    return [r for run_id, r in tracker.runs.items() if run_id not in before and r.tags.get("role") == RECOVERY_ROLE]


@pytest.mark.parametrize("damage", ["missing", "other-architecture"])
def test_lost_best_weights_are_trained_again_to_the_same_model(copy, damage):
    root, tracker, best, weights = copy
    path = root / "out" / files.WEIGHTS_FILE
    if damage == "missing":
        path.unlink()
    else:  # the right hash, but tensors that do not fit the best's network
        files.save_tensors_atomic(path, {"hash": best.hash, "weights": {"foo": torch.zeros(2)}})
    before, exporter = set(tracker.runs), KeepingExporter()
    search = _resume(root, tracker, exporter)
    assert search.finished.best.model_error is None and search.finished.best.onnx_path
    assert exporter.weights is not None and exporter.weights.keys() == weights.keys()
    assert all(torch.equal(exporter.weights[k], weights[k]) for k in weights), "same seed on CPU: the same weights"
    recovery = _recovery_runs(tracker, before)
    assert len(recovery) == 1 and recovery[0].status == "FINISHED" and recovery[0].tags["source_run_id"] == best.mlflow_run_id
    assert files.load_weights(path, best.hash) is not None, "checkpointed again"
    assert "recover" in search.finished.timings


def test_a_search_whose_best_cannot_be_rebuilt_finishes_loudly(copy):
    root, tracker, _, _ = copy
    (root / "out" / files.WEIGHTS_FILE).unlink()

    def failing(requests):
        for request in requests:
            yield EvaluationResult(request.index, tracker.start_run("x", {}, request.run_tags), "failed", "error: out of memory")

    search = _resume(root, tracker, KeepingExporter(), failing)
    best = search.finished.best
    assert best.onnx_path is None and "training it again failed: error: out of memory" in best.model_error
    parent = tracker.runs[search.run_id]
    assert parent.status == "FAILED" and "out of memory" in parent.tags["failure_reason"]
    on_disk = json.loads((root / "out" / "summary.json").read_text())
    assert on_disk["best"]["model_error"] == best.model_error


def test_a_model_the_exporter_rejects_finishes_with_the_reason(copy):
    root, tracker, _, _ = copy
    search = _resume(root, tracker, KeepingExporter(ModelExportError("ONNX and PyTorch logits differ by 0.3")))
    assert search.finished.best.model_error == "export failed: ONNX and PyTorch logits differ by 0.3"
    assert tracker.runs[search.run_id].status == "FAILED"


def test_an_intact_resume_trains_nothing_again(copy):
    root, tracker, _, weights = copy
    before, exporter = set(tracker.runs), KeepingExporter()
    search = _resume(root, tracker, exporter)
    assert search.finished.best.model_error is None
    assert not _recovery_runs(tracker, before) and all(torch.equal(exporter.weights[k], weights[k]) for k in weights)
