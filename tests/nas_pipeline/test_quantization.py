"""--quantize int8: a real search hands over an int8 model beside the float one, kept only within the accuracy limit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flows.cli import main
from nas_core.config import SearchConfig
from nas_core.search.summary import SearchSummary
from nas_pipeline import quantization
from nas_pipeline.pipeline import build_search
from nas_pipeline.quantization import INT8_FILE, quantize_int8
from tests.conftest import make_project
from tests.nas_pipeline.test_handoff import card, only_numpy_and_onnxruntime, predict, snapshot  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny real search (no Prefect) exported with --quantize int8; the limit is loose so the int8 model is kept."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        project = make_project(tmp_path_factory.mktemp("int8") / "project")
        config = SearchConfig(project_dir=project, output=project / "out", epochs=3, population=2, budget=2,
                              quantize="int8", max_accuracy_drop=1.0)  # fmt: skip
        run = build_search(config, search_id="int8")
        run.run()
        yield run


@pytest.mark.slow
def test_the_int8_model_is_handed_over_with_its_accuracy_and_latency_in_the_card(quantized):
    run = quantized
    report = SearchSummary.read(run.output).best.quantization
    assert report["kept"] and report["file"] == INT8_FILE and report["reason"].startswith("kept:")
    assert (run.output / INT8_FILE).is_file() and (run.output / "handoff" / INT8_FILE).is_file()
    assert report["accuracy_drop"] == pytest.approx(report["test_accuracy_fp32"] - report["test_accuracy_int8"], abs=1e-5)
    assert set(report["latency_ms"]) == {"1", "64"} and all(t["int8"] > 0 for t in report["latency_ms"].values())
    bundle_card = card(run.output / "handoff")
    assert bundle_card["quantization"] == report
    assert "## int8 model" in (run.output / "handoff" / "model_card.md").read_text()


@pytest.mark.slow
def test_predict_py_runs_the_int8_model_unchanged_and_scores_what_the_card_says(quantized, tmp_path, only_numpy_and_onnxruntime):  # noqa: F811
    run = quantized
    bundle = shutil.copytree(run.output / "handoff", tmp_path / "bundle")
    np.save(bundle / "test.npy", run.data.x["test"])
    proc = predict(bundle, only_numpy_and_onnxruntime, "test.npy", "--model", INT8_FILE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = np.array([p["class_index"] for p in json.loads(proc.stdout)["predictions"]])
    accuracy = float((predicted == run.data.y["test"]).mean())
    assert accuracy == pytest.approx(SearchSummary.read(run.output).best.quantization["test_accuracy_int8"], abs=1e-6)


@pytest.mark.slow
def test_an_int8_model_that_loses_too_much_accuracy_is_dropped_with_the_reason(quantized, tmp_path, monkeypatch):
    scores = iter([0.95, 0.90])  # float, then int8: 5 points lost
    monkeypatch.setattr(quantization, "accuracy", lambda *args: next(scores))
    report = quantize_int8(quantized.output / "model.onnx", tmp_path / INT8_FILE, quantized.data, 0.005)
    assert not report.kept and report.file is None and not (tmp_path / INT8_FILE).exists()
    assert report.reason.startswith("dropped: test accuracy 0.9000 vs 0.9500 loses 0.0500")


@pytest.mark.slow
def test_nas_export_quantizes_a_finished_search_without_touching_it(quantized, tmp_path, capsys):
    run = quantized
    before = snapshot(run.output)
    code = main(["export", str(run.output), "--output", str(tmp_path / "bundle"), "--quantize", "int8",
                 "--max-accuracy-drop", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    bundle = tmp_path / "bundle"
    assert (bundle / INT8_FILE).is_file() and card(bundle)["quantization"]["kept"]
    assert snapshot(run.output) == before, "the search is only read"
