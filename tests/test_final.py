"""Final training of the winner: retrained on train+val, tested once, exported, registered and linked in MLflow."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from mlflow.tracking import MlflowClient

from nas_core.candidate import run_candidate
from nas_core.final import FINAL_ROLE, final_job, record_final
from tests.conftest import search_directly


def test_the_winner_is_retrained_exported_and_linked_to_its_candidate(project, single_torch_thread):
    run = search_directly(project, "final", budget=2, population=2, epochs=1, final_epochs=2)
    best = run.best()
    job = final_job(run)
    assert job.train.epochs == 2 and job.train.train_splits == ("train", "val") and job.hash == best.hash
    final = record_final(run, run_candidate(job))
    assert final.ok and final.source_run_id == best.mlflow_run_id
    assert final_job(run) is None, "trained once"
    assert any(not torch.equal(final.weights[k], best.weights[k]) for k in best.weights), "retrained, not copied"

    report = run.export()
    summary = run.finish(report)
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

    assert summary["final"]["status"] == "ok" and summary["best"]["final_run_id"] == final.run_id
    assert summary["best"]["test_accuracy"] == final.metrics["test_accuracy"]
    assert summary["best"]["candidate_test_accuracy"] == best.metrics["test_accuracy"]
    # the ONNX model is the final model, and says so
    model = onnx.load(report.path)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["nas.final_run_id"] == final.run_id
    assert json.loads(metadata["nas.metrics"])["test_accuracy"] == final.metrics["test_accuracy"]
    x = run.data.x["test"][:16]
    session = ort.InferenceSession(str(report.path))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        expected = run.best_model()(torch.from_numpy(x)).numpy()
    assert np.allclose(onnx_out, expected, atol=1e-4)
    version = client.get_model_version(summary["best"]["registry"]["name"], summary["best"]["registry"]["version"])
    assert float(version.tags["nas.test_accuracy"]) == final.metrics["test_accuracy"]
