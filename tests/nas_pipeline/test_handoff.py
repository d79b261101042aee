"""Handoff bundle: written by a real search and by `nas export`; predict.py alone agrees with the PyTorch model."""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from flows.cli import EXIT_USAGE, main
from nas_core.config import SearchConfig
from nas_core.search.loop import Search
from nas_core.search.summary import SearchSummary
from nas_pipeline.handoff import (
    PREDICT_TEMPLATE,
    PREPROCESSING_KEY,
    CardInputs,
    HandoffError,
    PredictedLatency,
    Preprocessing,
    build_model_card,
    card_inputs_from_output,
    render_markdown,
    write_bundle,
)
from nas_pipeline.pipeline import build_search
from tests.conftest import REPO_ROOT, make_project

BUNDLE = {"model.onnx", "model_card.json", "model_card.md", "predict.py", "requirements.txt", "example_input.npy"}


def search(project: Path, search_id: str, seed: int = 0, before_export: Callable[[Search], None] | None = None) -> Search:
    """A tiny real search driven directly (no Prefect), exported and finished."""
    config = SearchConfig(project_dir=project, output=project / search_id, epochs=2, population=2, budget=2, seed=seed)
    run = build_search(config, search_id=search_id)

    def stage(name: str, step: Callable[[], Any]) -> Any:
        if name == "export" and before_export is not None:
            before_export(run)
        return step()

    run.run(stage=stage)
    return run


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One real search in a fresh project on the default SQLite store (the `project` fixture, for the module)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        project = make_project(tmp_path_factory.mktemp("handoff") / "project")
        yield project, search(project, "handoff-1")


def card(folder: Path) -> dict:
    return json.loads((folder / "model_card.json").read_text())


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def torch_probabilities(run: Search, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(run.best_model()(torch.from_numpy(x)).double(), dim=1).numpy()


@pytest.fixture(scope="module")
def only_numpy_and_onnxruntime(tmp_path_factory) -> Path:
    """A folder that makes numpy and onnxruntime (and nothing else) importable: links to their installed packages."""
    import onnxruntime

    folder = tmp_path_factory.mktemp("site")
    for package in (np, onnxruntime):
        installed = Path(package.__file__).parent
        for name in (installed.name, f"{installed.name}.libs"):  # .libs: the wheel's bundled shared libraries
            if (installed.parent / name).exists():
                (folder / name).symlink_to(installed.parent / name)
    return folder


def predict(bundle: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    """predict.py on an interpreter without site-packages that sees only ``site``, listing every module it imports."""
    command = [sys.executable, "-S", "-s", "-X", "importtime", "predict.py", *args]
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site)}
    return subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=120)


def imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.slow
def test_search_writes_the_bundle_and_records_it_in_the_summary(searched):
    project, run = searched
    best = SearchSummary.read(run.output).best
    assert best is not None and best.handoff_path is not None and best.registry is not None
    bundle = Path(best.handoff_path)
    assert bundle == run.output / "handoff"
    assert {p.name for p in bundle.iterdir()} == BUNDLE
    assert (bundle / "model.onnx").read_bytes() == (run.output / "model.onnx").read_bytes()
    assert (bundle / "predict.py").read_text() == PREDICT_TEMPLATE.read_text()
    assert best.registry["version"] == "1" and best.registry["promoted"] is True
    stored = json.loads((run.output / "summary.json").read_text())["best"]
    for key in ("hash", "val_accuracy", "test_accuracy", "params", "flops", "genome", "onnx_path", "onnx_max_abs_diff"):
        assert key in stored  # the existing keys stay
    metadata = {p.key: p.value for p in onnx.load(str(run.output / "model.onnx")).metadata_props}
    stored = {"mean": run.data.mean, "std": run.data.std, "input_range": [0.0, 1.0], "resize": None}
    assert json.loads(metadata[PREPROCESSING_KEY]) == stored


@pytest.mark.slow
def test_one_provenance_is_written_alike_to_runs_onnx_registry_and_card(searched):
    from mlflow.tracking import MlflowClient

    from nas_core.provenance import Provenance

    project, run = searched
    summary = SearchSummary.read(run.output)
    metadata = {p.key: p.value for p in onnx.load(str(run.output / "model.onnx")).metadata_props}
    provenance = Provenance.from_tags(metadata)
    assert provenance.search_id == run.search_id and provenance.dataset_version == run.dataset.version
    assert provenance.hash == summary.best.hash and provenance.candidate_run_id == summary.best.mlflow_run_id
    assert provenance.search_run_id == run.run_id and provenance.code_commit is not None
    tags = provenance.tags()
    assert {k: metadata[k] for k in tags} == tags
    assert card(run.output / "handoff")["provenance"]["tags"] == tags
    client = MlflowClient(run.tracker.tracking_uri)
    version = client.get_model_version(summary.best.registry["name"], summary.best.registry["version"])
    assert {k: version.tags.get(k) for k in tags} == tags
    search_tags = client.get_run(run.run_id).data.tags
    candidate_tags = client.get_run(summary.best.mlflow_run_id).data.tags
    for key in ("nas.search_id", "nas.dataset", "nas.dataset_version", "nas.code_commit", "nas.package_version"):
        assert search_tags[key] == candidate_tags[key] == tags[key], key
    assert candidate_tags["nas.search_run_id"] == tags["nas.search_run_id"]


@pytest.mark.slow
def test_model_card_states_input_preprocessing_metrics_and_provenance(searched):
    project, run = searched
    best, c = run.best(), card(run.output / "handoff")
    assert c["input"] == {"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0]}
    pre = c["preprocessing"]
    assert pre["normalization"] == {
        "mean": run.data.mean,
        "std": run.data.std,
        "formula": "(x - mean[c]) / std[c]",
        "inside_model": True,
    }
    assert pre["resize"] is None and "must already be 8x8 (height x width)" in pre["resize_note"]
    assert pre["input_range"] == [0.0, 1.0] and pre["dtype"] == "float32"
    assert c["classes"] == run.data.classes == [str(i) for i in range(10)]
    assert c["output"]["shape"] == ["batch", 10]
    assert (
        c["dataset"] == {"name": "digits", "version": run.dataset.version}
        and c["metrics"]["dataset_version"] == run.dataset.version
    )
    assert c["metrics"]["validation"] == {"accuracy": best.metrics["val_accuracy"], "f1_macro": best.metrics["val_f1"]}
    assert c["metrics"]["test"] == {"accuracy": best.metrics["test_accuracy"], "f1_macro": best.metrics["test_f1"]}
    arch = c["architecture"]
    assert (arch["hash"], arch["genome"]) == (best.hash, best.genome.to_dict())
    assert (arch["params"], arch["flops"]) == (int(best.metrics["params"]), int(best.metrics["flops"]))
    assert [r["batch_size"] for r in c["latency"]["per_batch"]] == [1, 8, 64]
    assert all(r["median_ms"] > 0 for r in c["latency"]["per_batch"])
    predicted, measured = c["latency"]["predicted"], c["latency"]["per_batch"][0]["median_ms"]
    assert (predicted["predicted_ms"], predicted["batch_size"]) == (best.metrics["latency_ms"], 1)  # the search's figure
    assert predicted["measured_ms"] == measured
    assert predicted["relative_error"] == round((predicted["predicted_ms"] - measured) / measured, 4)
    model = run.output / "handoff" / "model.onnx"
    assert c["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert c["provenance"]["code"]["git_commit"] == head and isinstance(c["provenance"]["code"]["git_dirty"], bool)
    assert c["provenance"]["search_id"] == "handoff-1"
    assert c["provenance"]["mlflow"]["candidate_run_id"] == best.mlflow_run_id
    assert datetime.fromisoformat(c["created_at"]).tzinfo is not None
    labels = [str(y) for y in run.data.y["test"][:8]]
    assert c["example"]["labels"] == labels and len(c["example"]["predicted"]) == 8
    md = (run.output / "handoff" / "model_card.md").read_text()
    for text in (run.dataset.version, best.hash, f"mean={run.data.mean}", "must already be 8x8", "| 64 |", head):
        assert text in md
    assert f"Predicted by the search at batch size 1: {predicted['predicted_ms']:.4f} ms per call" in md


@pytest.mark.slow
def test_predict_py_alone_agrees_with_the_pytorch_model(searched, tmp_path, only_numpy_and_onnxruntime):
    project, run = searched
    site = only_numpy_and_onnxruntime
    bundle = shutil.copytree(run.output / "handoff", tmp_path / "bundle")  # outside the repository and the project
    x = run.data.x["test"][:100]
    np.save(bundle / "inputs.npy", x)
    probe = subprocess.run([sys.executable, "-S", "-s", "-c", "import torch"], env={"PYTHONPATH": str(site)}, capture_output=True)
    assert probe.returncode != 0 and b"No module named 'torch'" in probe.stderr  # the interpreter below cannot see torch
    proc = predict(bundle, site, "inputs.npy", "--batch-size", "7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = imported(proc.stderr)
    assert {"numpy", "onnxruntime"} <= modules
    assert not modules & {"torch", "nas_core", "flows", "mlflow", "onnx", "sklearn", "prefect"}, modules
    tree = ast.parse((bundle / "predict.py").read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots - {"numpy", "onnxruntime"} <= set(sys.stdlib_module_names)
    out = json.loads(proc.stdout)
    expected = torch_probabilities(run, x)
    assert [p["index"] for p in out["predictions"]] == list(range(100))
    assert [p["class_index"] for p in out["predictions"]] == expected.argmax(axis=1).tolist()
    assert [p["label"] for p in out["predictions"]] == [run.data.classes[k] for k in expected.argmax(axis=1)]
    np.testing.assert_allclose([p["probabilities"] for p in out["predictions"]], expected, atol=1e-5)
    example = predict(bundle, site, "example_input.npy")
    assert [p["label"] for p in json.loads(example.stdout)["predictions"]] == card(bundle)["example"]["predicted"]


@pytest.mark.slow
def test_predict_py_writes_csv_takes_scaled_integers_and_rejects_bad_input(searched, tmp_path, only_numpy_and_onnxruntime):
    project, run = searched
    site = only_numpy_and_onnxruntime
    bundle = shutil.copytree(run.output / "handoff", tmp_path / "bundle")
    pixels = np.round(run.data.x["test"][:20] * 16).astype(np.uint8)  # digits' raw pixels are 0..16
    np.save(bundle / "ints.npy", pixels)
    np.save(bundle / "floats.npy", pixels.astype(np.float32) / 16)
    proc = predict(bundle, site, "ints.npy", "--scale", "16", "--output", "out.csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((bundle / "out.csv").open()))
    reference = json.loads(predict(bundle, site, "floats.npy").stdout)["predictions"]
    assert [r["label"] for r in rows] == [p["label"] for p in reference]
    assert np.allclose([float(r["p_0"]) for r in rows], [p["probabilities"][0] for p in reference], atol=1e-12)
    assert list(rows[0])[:4] == ["index", "label", "class_index", "probability"]
    np.save(bundle / "wide.npy", np.zeros((2, 1, 9, 9), np.float32))
    np.save(bundle / "bright.npy", np.full((2, 1, 8, 8), 255.0, np.float32))
    cases = {
        ("ints.npy",): "pass --scale",
        ("floats.npy", "--scale", "16"): "integer inputs only",
        ("wide.npy",): "expected (N, 1, 8, 8)",
        ("bright.npy",): "values in [0, 1]",
        ("missing.npy",): "not found",
        ("floats.npy", "--batch-size", "0"): "--batch-size",
        ("floats.npy", "--model", "nope.onnx"): "not found",
    }
    for args, message in cases.items():
        bad = predict(bundle, site, *args)
        lines = [line for line in bad.stderr.splitlines() if not line.startswith("import time:")]
        assert bad.returncode == 2 and bad.stdout == "", (args, bad.stderr[-500:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, lines)


@pytest.mark.slow
def test_nas_export_rebuilds_the_bundle_without_touching_the_search(searched, tmp_path, capsys):
    project, run = searched
    before = snapshot(run.output)
    dest = tmp_path / "by-id"
    assert main(["export", "handoff-1", "--output", str(dest), "--project-dir", str(project)]) == 0  # found through MLflow
    assert str(dest) in capsys.readouterr().out
    assert snapshot(run.output) == before
    assert {p.name for p in dest.iterdir()} == BUNDLE
    ours, theirs = card(dest), card(run.output / "handoff")
    for key in ("input", "output", "preprocessing", "classes", "dataset", "metrics", "architecture", "example"):
        assert ours[key] == theirs[key], key
    assert ours["model"]["sha256"] == theirs["model"]["sha256"]
    assert ours["provenance"]["registry"] == theirs["provenance"]["registry"]
    assert ours["latency"]["predicted"]["predicted_ms"] == theirs["latency"]["predicted"]["predicted_ms"]
    (tmp_path / "empty").mkdir()
    assert main(["export", str(run.output), "--output", str(tmp_path / "empty")]) == 0  # by folder, into an empty one
    assert card(tmp_path / "empty")["architecture"]["hash"] == run.best().hash


@pytest.mark.slow  # the module's real search (its fixture) takes seconds
def test_card_inputs_take_the_provenance_from_the_model_and_the_best_from_the_summary(searched, tmp_path):
    """Search id, dataset, its version, hash and run ids come from model.onnx's metadata, not from summary.json."""
    project, run = searched
    copy = shutil.copytree(run.output, tmp_path / "copy", ignore=shutil.ignore_patterns("handoff"))
    summary = SearchSummary.read(copy)
    assert summary.best is not None
    dataclasses.replace(summary, search_id="elsewhere", dataset={"name": "other", "version": "v0"}).write(copy)
    inputs, model = card_inputs_from_output(copy)
    assert model == copy / "model.onnx"
    assert (inputs.search_id, inputs.dataset, inputs.dataset_version) == ("handoff-1", "digits", run.dataset.version)
    assert (inputs.hash, inputs.genome, inputs.registry) == (summary.best.hash, summary.best.genome, summary.best.registry)
    assert inputs.mlflow["search_run_id"] == run.run_id and inputs.mlflow["candidate_run_id"] == run.best().mlflow_run_id
    assert inputs.mlflow == card(run.output / "handoff")["provenance"]["mlflow"]  # as the search's own bundle says

    dataclasses.replace(summary, best=dataclasses.replace(summary.best, hash="0" * 16)).write(copy)
    with pytest.raises(HandoffError, match="is not the best model of summary.json"):
        card_inputs_from_output(copy)
    (copy / "summary.json").write_text('{"format": 99}')
    with pytest.raises(HandoffError, match="is not a search summary: summary format 99"):
        card_inputs_from_output(copy)
    (copy / "summary.json").write_text("{")
    with pytest.raises(HandoffError, match="cannot read"):
        card_inputs_from_output(copy)


@pytest.mark.slow
def test_nas_export_of_an_older_search_reads_the_normalisation_from_the_project(searched, tmp_path):
    """A model exported before the normalisation was in its metadata, and no bundle: the project's data of that version."""
    project, run = searched
    old = shutil.copytree(run.output, tmp_path / "old", ignore=shutil.ignore_patterns("handoff"))
    proto = onnx.load(str(old / "model.onnx"))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != PREPROCESSING_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(old / "model.onnx"))
    assert main(["export", str(old), "--output", str(tmp_path / "bundle")]) == 0
    exported = card(tmp_path / "bundle")
    assert exported["preprocessing"]["normalization"]["mean"] == run.data.mean
    assert exported["example"] is None and not (tmp_path / "bundle" / "example_input.npy").exists()


@pytest.mark.slow
def test_nas_export_bad_input_is_one_line_and_writes_nothing(searched, tmp_path, capsys, monkeypatch):
    project, run = searched
    monkeypatch.chdir(tmp_path)
    unfinished = shutil.copytree(run.output, tmp_path / "unfinished", ignore=shutil.ignore_patterns("summary.json"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    (tmp_path / "plain").mkdir()
    cases = [
        (["no-such-search"], "no search output folder or search id 'no-such-search'"),
        ([str(tmp_path / "plain")], "no search.json"),
        ([str(unfinished)], "has not finished"),
        ([str(run.output), "--output", str(tmp_path / "taken")], "is not empty"),
        ([str(run.output), "--output", str(tmp_path / "taken" / "notes.txt")], "is not a folder"),
    ]
    for args, expected in cases:
        if "--output" not in args:
            args = [*args, "--output", str(tmp_path / "new")]
        assert main(["export", *args]) == EXIT_USAGE, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, (args, err)
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert {p.name for p in tmp_path.iterdir()} == {"unfinished", "taken", "plain"}


@pytest.mark.slow  # the module's real search (its fixture) takes seconds
def test_card_inputs_carry_the_bests_predicted_latency_and_none_for_an_older_search(searched, tmp_path):
    """The best's latency_ms comes from its row in summary.json; a search from before latency_ms has none."""
    project, run = searched
    copy = shutil.copytree(run.output, tmp_path / "copy", ignore=shutil.ignore_patterns("handoff"))
    inputs, _ = card_inputs_from_output(copy)
    assert inputs.predicted_latency == PredictedLatency(run.best().metrics["latency_ms"], 1, "CPUExecutionProvider", 1)

    summary = SearchSummary.read(copy)
    older = tuple({k: v for k, v in row.items() if k != "latency_ms"} for row in summary.candidates)
    dataclasses.replace(summary, candidates=older).write(copy)
    inputs, _ = card_inputs_from_output(copy)
    assert inputs.predicted_latency is None
    assert main(["export", str(copy), "--output", str(tmp_path / "bundle")]) == 0
    assert card(tmp_path / "bundle")["latency"]["predicted"] is None
    assert "Predicted by the search" not in (tmp_path / "bundle" / "model_card.md").read_text()


def test_the_predicted_latency_is_read_from_the_metrics_with_the_searchs_settings():
    assert PredictedLatency.of({"val_accuracy": 0.9}, {"latency_batch": 8}) is None  # no latency_ms: no prediction
    assert PredictedLatency.of({"latency_ms": 0.5}, None) is None  # settings unknown: the batch size is unknown
    settings = {"latency_batch": 8, "latency_threads": 2, "latency_provider": "CUDAExecutionProvider"}
    assert PredictedLatency.of({"latency_ms": 0.5}, settings) == PredictedLatency(0.5, 8, "CUDAExecutionProvider", 2)
    older = {"latency_batch": 4, "latency_threads": 1}  # before latency_provider: the CPU
    assert PredictedLatency.of({"latency_ms": 0.5}, older) == PredictedLatency(0.5, 4, "CPUExecutionProvider", 1)


def tiny_model(path: Path) -> Path:
    """An ONNX model of 4 features (identity), enough for a card."""
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in ("input", "output")]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "tiny", spec[:1], spec[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def tiny_inputs(predicted: PredictedLatency | None) -> CardInputs:
    return CardInputs(
        search_id="s", dataset="npz:x.npz", dataset_version="v1", classes=["a", "b", "c", "d"],
        preprocessing=Preprocessing([0.0], [1.0], None), metrics={}, genome={}, hash="0" * 16, params=0, flops=0,
        predicted_latency=predicted,
    )  # fmt: skip


MEASURED = {
    "runtime": "onnxruntime 1", "provider": "CPUExecutionProvider", "threads": 1, "machine": "here", "machine_key": "k",
    "timing": {"calls": 10, "rounds": 10, "warmup": 10, "gap_seconds": 0.1},
    "per_batch": [{"batch_size": 1, "median_ms": 0.04, "per_input_ms": 0.04},
                  {"batch_size": 8, "median_ms": 0.2, "per_input_ms": 0.025}],
}  # fmt: skip


def test_the_card_shows_the_predicted_latency_beside_the_measured_one(tmp_path):
    model = tiny_model(tmp_path / "model.onnx")
    code = {"git_commit": None, "git_dirty": False, "package_version": None}

    def card_of(predicted: PredictedLatency | None) -> tuple[dict, str]:
        built = build_model_card(tiny_inputs(predicted), model, MEASURED, code, "now")
        return built, render_markdown(built)

    built, md = card_of(PredictedLatency(0.05, 8))
    predicted = built["latency"]["predicted"]
    assert (predicted["batch_size"], predicted["predicted_ms"], predicted["measured_ms"]) == (8, 0.05, 0.2)
    assert predicted["relative_error"] == pytest.approx((0.05 - 0.2) / 0.2)
    assert built["latency"]["per_batch"] == MEASURED["per_batch"]  # the measured figures as they were
    assert "at batch size 8: 0.0500 ms per call; 0.2000 ms measured; relative error -75.0%" in md

    built, md = card_of(PredictedLatency(0.05, 1, threads=4))
    assert built["latency"]["predicted"]["relative_error"] is None  # predicted on 4 threads, measured on 1: not compared
    assert "not compared (predicted on CPUExecutionProvider, 4 thread(s))" in md

    built, md = card_of(None)
    assert built["latency"]["predicted"] is None and "Predicted" not in md


def test_the_bundle_measures_at_the_predictions_batch_size_too(tmp_path):
    model = tiny_model(tmp_path / "model.onnx")
    write_bundle(model, tiny_inputs(PredictedLatency(0.01, 4)), tmp_path / "with")
    latency = card(tmp_path / "with")["latency"]
    assert [r["batch_size"] for r in latency["per_batch"]] == [1, 4, 8, 64]
    assert latency["predicted"]["measured_ms"] == latency["per_batch"][1]["median_ms"]
    assert "Predicted by the search at batch size 4" in (tmp_path / "with" / "model_card.md").read_text()

    write_bundle(model, tiny_inputs(None), tmp_path / "without")
    latency = card(tmp_path / "without")["latency"]
    assert [r["batch_size"] for r in latency["per_batch"]] == [1, 8, 64] and latency["predicted"] is None
    assert "Predicted by the search" not in (tmp_path / "without" / "model_card.md").read_text()
