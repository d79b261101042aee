"""Final training of the winner: retrained on train+val, tested once, exported, registered and linked in MLflow."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from nas_core.search.final import FINAL_ROLE
from tests.conftest import search_directly


@pytest.mark.slow
def test_the_winner_is_retrained_exported_and_linked_to_its_candidate(project, single_torch_thread):
    run = search_directly(project, "final", budget=2, population=2, epochs=1, final_epochs=2)
    best, final = run.best(), run.finalist.model
    assert final is not None and final.ok and final.source_run_id == best.mlflow_run_id and final.source_hash == best.hash
    assert run.final_request() is None, "trained once"
    weights, best_weights = run.finalist.weights, run.best_weights
    assert any(not torch.equal(weights[k], best_weights[k]) for k in best_weights), "retrained, not copied"

    summary = run.finished.to_dict()
    client = MlflowClient(run.tracker.tracking_uri)
    remote = client.get_run(final.run_id)
    assert remote.info.status == "FINISHED" and remote.data.tags["nas.role"] == FINAL_ROLE
    assert remote.data.tags["nas.source_run_id"] == best.mlflow_run_id
    assert remote.data.tags["mlflow.parentRunId"] == run.run_id
    assert client.get_run(best.mlflow_run_id).data.tags["nas.final_run_id"] == final.run_id
    assert client.get_run(run.run_id).data.tags["nas.final_run_id"] == final.run_id
    assert [m.step for m in client.get_metric_history(final.run_id, "train_loss")] == [1, 2]
    assert client.get_metric_history(final.run_id, "val_accuracy") == [], "validation was trained on"
    assert remote.data.metrics["test_accuracy"] == final.metrics["test_accuracy"]
    assert remote.data.params["train.epochs"] == "2" and remote.data.params["train.train_splits"] == "train+val"

    assert summary["final"]["status"] == "ok" and summary["best"]["final_run_id"] == final.run_id
    assert summary["best"]["test_accuracy"] == final.metrics["test_accuracy"]
    assert summary["best"]["candidate_test_accuracy"] == best.metrics["test_accuracy"]
    # the ONNX model is the final model, and says so
    model = onnx.load(summary["best"]["onnx_path"])
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["nas.final_run_id"] == final.run_id
    assert json.loads(metadata["nas.metrics"])["test_accuracy"] == final.metrics["test_accuracy"]
    x = run.data.x["test"][:16]
    session = ort.InferenceSession(str(summary["best"]["onnx_path"]))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = run.best_model()(torch.from_numpy(x)).numpy()
    assert np.allclose(onnx_out, expected, atol=1e-4)
    version = client.get_model_version(summary["best"]["registry"]["name"], summary["best"]["registry"]["version"])
    assert float(version.tags["nas.test_accuracy"]) == final.metrics["test_accuracy"]
