"""Model registry on the default SQLite store: ONNX versions with signature and example, and the champion alias."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import mlflow
import mlflow.onnx
import numpy as np
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient

from nas_pipeline.model_registry import CHAMPION_ALIAS, Champion, ModelFacts, decide, register_onnx, registered_model_name
from tests.conftest import make_project
from tests.nas_pipeline.test_handoff import search

FACTS = ModelFacts("digits", "v1.dir", "s1", "abc", val_accuracy=0.9, test_accuracy=0.8)


@pytest.mark.parametrize(
    ("champion", "promoted", "reason"),
    [
        (None, True, "no champion"),
        (Champion("3", "v1.dir", 0.85), True, "val_accuracy 0.9 beats champion version 3's 0.85 on the same dataset version"),
        (Champion("3", "v1.dir", 0.9), False, "val_accuracy 0.9 does not beat champion version 3's 0.9"),
        (Champion("3", "v1.dir", 0.95), False, "does not beat champion version 3's 0.95"),
        (Champion("3", "v0.dir", 0.1), False, "dataset version v1.dir differs from champion version 3's (v0.dir)"),
        (Champion("3", "v1.dir", None), False, "has no nas.val_accuracy tag"),
    ],
)
def test_the_champion_is_replaced_only_by_a_better_model_on_the_same_dataset_version(champion, promoted, reason):
    assert decide(FACTS, champion)[0] is promoted
    assert reason in decide(FACTS, champion)[1]


def test_the_selection_is_by_validation_never_by_test():
    better_test_only = dataclasses.replace(FACTS, val_accuracy=0.8, test_accuracy=1.0)
    assert decide(better_test_only, Champion("1", "v1.dir", 0.85))[0] is False


def worse(run) -> None:
    """Lower the validation accuracy of every candidate, keeping the same best."""
    best = run.best()
    for record in run.records:
        record.metrics["val_accuracy"] = 0.05 if record is best else 0.04


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two real searches in one project on the default SQLite store; the second made worse before it registers."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        project = make_project(tmp_path_factory.mktemp("registry") / "project")
        env.chdir(project.parent)  # where MLflow would put a stray ./mlruns
        first = search(project, "first")
        second = search(project, "second", seed=1, before_export=worse)
        yield project, first, second


def versions(client: MlflowClient, name: str) -> dict[str, dict[str, str]]:
    return {str(v.version): v.tags for v in client.search_model_versions(f"name = '{name}'")}


@pytest.mark.slow
def test_a_search_registers_its_best_model_as_an_onnx_version_with_signature_and_example(registered, monkeypatch):
    project, first, second = registered
    client = MlflowClient(first.tracker.tracking_uri)
    assert first.tracker.tracking_uri == f"sqlite:///{project / 'mlflow.db'}"
    name = registered_model_name("digits")
    assert name == "nas-digits"
    version = client.get_model_version(name, "1")
    best = first.best()
    assert version.run_id == first.run_id
    tags = version.tags
    assert tags["nas.search_id"] == "first" and tags["nas.hash"] == best.hash
    assert tags["nas.dataset_version"] == first.dataset.version
    assert float(tags["nas.val_accuracy"]) == best.metrics["val_accuracy"]
    assert float(tags["nas.test_accuracy"]) == best.metrics["test_accuracy"]
    assert tags["nas.promoted"] == "true" and "no champion" in tags["nas.promotion_reason"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first.tracker.tracking_uri)  # as a user of the registry would
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION_ALIAS}", dst_path=str(project.parent / "dl")))
    meta = mlflow.models.Model.load(local / "MLmodel")
    assert "onnx" in meta.flavors
    inputs = meta.signature.inputs.to_dict()
    assert inputs[0]["tensor-spec"]["dtype"] == "float32" and list(inputs[0]["tensor-spec"]["shape"]) == [-1, 1, 8, 8]
    assert list(meta.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]
    np.testing.assert_allclose(meta.load_input_example(str(local)), first.data.x["test"][:5], atol=1e-6)
    session = ort.InferenceSession(str(local / "model.onnx"), providers=["CPUExecutionProvider"])
    x = first.data.x["test"][:16]
    reference = ort.InferenceSession(str(first.output / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], reference.run(None, {"input": x})[0])
    assert Path(project / "mlartifacts").is_dir() and not (project.parent / "mlruns").exists()


@pytest.mark.slow
def test_a_worse_search_is_kept_unpromoted_with_the_reason_in_its_tags_and_summary(registered):
    project, first, second = registered
    client = MlflowClient(second.tracker.tracking_uri)
    name = registered_model_name("digits")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["nas.promoted"] == "false" and tags["nas.search_id"] == "second" and tags["nas.previous_champion"] == "1"
    assert "val_accuracy 0.05 does not beat champion version 1's" in tags["nas.not_promoted_reason"]
    summary = json.loads((second.output / "summary.json").read_text())
    assert summary["best"]["registry"]["promoted"] is False
    assert summary["best"]["registry"]["reason"] == tags["nas.not_promoted_reason"]
    assert summary["best"]["registry"]["champion_version"] == "1"


@pytest.mark.slow
def test_a_better_model_moves_the_alias_and_another_dataset_version_does_not(registered, monkeypatch):
    project, first, second = registered
    uri = second.tracker.tracking_uri
    client = MlflowClient(uri)
    name = registered_model_name("digits")
    champion_val = float(client.get_model_version(name, "1").tags["nas.val_accuracy"])
    facts = ModelFacts("digits", second.dataset.version, "third", second.best().hash, champion_val + 0.01, 0.1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # a user's own setting survives the registration
    x = second.data.x["test"][:5]
    better = register_onnx(uri, second.run_id, second.output / "model.onnx", x, facts)
    assert os.environ["MLFLOW_TRACKING_URI"] == uri
    assert (better.version, better.promoted, better.previous_champion_version) == ("3", True, "1")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "3"
    assert client.get_model_version(name, "3").tags["nas.previous_champion"] == "1"
    other = dataclasses.replace(facts, dataset_version="another.dir", search_id="fourth", val_accuracy=1.0)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri()
    elsewhere = register_onnx(uri, second.run_id, second.output / "model.onnx", x, other)
    assert mlflow.get_tracking_uri() == before and "MLFLOW_TRACKING_URI" not in os.environ
    assert (elsewhere.version, elsewhere.promoted, elsewhere.champion_version) == ("4", False, "3")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == "3"
    tags = versions(client, name)["4"]
    assert tags["nas.promoted"] == "false" and "dataset version another.dir differs" in tags["nas.not_promoted_reason"]
    assert set(versions(client, name)) == {"1", "2", "3", "4"}


@pytest.mark.slow
def test_exporting_a_search_again_reuses_its_version(registered):
    """A search resumed after its export (but before its summary) exports again: no second version."""
    project, first, second = registered
    client = MlflowClient(first.tracker.tracking_uri)
    name = registered_model_name("digits")
    before = set(versions(client, name))
    again = first.export()
    assert again.path == first.output / "model.onnx"
    assert set(versions(client, name)) == before, "no new version"
    registration = first.export_outcome.registration
    assert registration["version"] == "1" and registration["promoted"] is True
    assert "no champion" in registration["reason"]
    assert registration["champion_version"] == str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)


def test_one_registered_model_per_dataset_wherever_its_file_lies():
    assert registered_model_name("npz:/tmp/m1d/mnist1d.npz") == "nas-npz-mnist1d"
    assert registered_model_name("npz:/elsewhere/mnist1d.npz") == "nas-npz-mnist1d", "the folder does not leak in"
    assert registered_model_name("digits") == "nas-digits"
    assert registered_model_name("table:nb201 table.csv") == "nas-table-nb201-table.csv", "not a dataset: its name, made safe"
