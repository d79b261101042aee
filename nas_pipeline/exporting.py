"""The search's :class:`~nas_core.search.ports.ModelExporter`: ONNX (checked, compared with PyTorch), logged on the
search's run, registered in the MLflow model registry, and handed over as a bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nas_core.data.preparation import PreparedData
from nas_core.search.ports import ExportOutcome, ExportRequest, Tracker
from nas_pipeline.handoff import PREPROCESSING_KEY, preprocessing_metadata, write_search_bundle
from nas_pipeline.model_registry import Registration, register_search_best
from nas_pipeline.onnx_export import PARITY_SAMPLES, ExportReport, export_onnx
from nas_pipeline.pareto_export import entry, export_front_model, finish_front
from nas_pipeline.quantization import INT8_FILE, QuantizationReport, quantize_int8

MODEL_FILE = "model.onnx"
PARITY_SPLITS = ("test", "val", "train")  # the test split first; a small one is topped up from the others


def parity_inputs(data: PreparedData, least: int = PARITY_SAMPLES) -> np.ndarray:
    """Real inputs to compare ONNX with PyTorch on: the whole test split, topped up from val and train to ``least``."""
    parts, have = [], 0
    for split in PARITY_SPLITS:
        if split not in data.x or (parts and have >= least):
            continue
        part = data.x[split] if not parts else data.x[split][: least - have]
        parts.append(part)
        have += len(part)
    return np.concatenate(parts) if parts else np.empty((0, *data.input_shape), dtype=np.float32)


def model_metadata(request: ExportRequest) -> dict[str, str]:
    """The ONNX metadata of the exported model: its provenance, genome, metrics, classes and preprocessing."""
    data = request.data
    value_range = "float32 in [{:g}, {:g}]".format(*data.input_range) if data.input_range else "float32 features"
    return {
        **request.provenance.tags(),
        "nas.genome": request.best.genome.to_json(),
        "nas.metrics": json.dumps(request.metrics, sort_keys=True),
        "nas.input_range": value_range + "; normalisation is inside the model",
        "nas.classes": json.dumps(data.classes),
        PREPROCESSING_KEY: preprocessing_metadata(data),
    }


def onnx_of(request: ExportRequest, path: Path) -> ExportReport:
    """The request's model as ONNX at ``path``: checked, compared with PyTorch, its provenance in the metadata."""
    return export_onnx(request.model, path, parity_inputs(request.data), model_metadata(request))


class OnnxExporter:
    """Exports to ``<output>/model.onnx``, logs it, registers it and writes ``<output>/handoff/``; with ``export:
    pareto``, the front's other models too (:mod:`nas_pipeline.pareto_export`)."""

    def export(self, request: ExportRequest, tracker: Tracker) -> ExportOutcome:
        run_id, best = request.search_run_id, request.best
        report = onnx_of(request, request.output / MODEL_FILE)
        tracker.log_artifact(run_id, report.path, "model")
        tracker.log_metrics(run_id, {"onnx_max_abs_diff": report.max_abs_diff})
        tracker.set_tags(run_id, {"best_run_id": best.mlflow_run_id, "best_hash": best.hash})
        int8 = self._quantize(request, report.path, tracker) if request.quantize == "int8" else None
        registration = register_search_best(request, report.path, tracker.tracking_uri)
        handoff = write_search_bundle(request, report, registration, tracker.tracking_uri, int8)
        quantization = int8.to_dict() if int8 else None
        front = self._front(request, tracker, entry(request, report, registration, handoff)) if request.front is not None else ()
        return ExportOutcome(
            report.path, report.max_abs_diff, report.samples, registration.to_dict(), handoff, quantization, front
        )

    @staticmethod
    def _front(request: ExportRequest, tracker: Tracker, best: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        """Hand over the front's other models like the best, then time them all and set the aliases."""

        def bundle(own: ExportRequest, report: ExportReport, registration: Registration) -> Path:
            return write_search_bundle(own, report, registration, tracker.tracking_uri)

        entries = [best]
        for member in request.front or ():
            entries.append(export_front_model(request, member, tracker, onnx_of, bundle))
        return finish_front(request, entries, tracker)

    @staticmethod
    def _quantize(request: ExportRequest, model: Path, tracker: Tracker) -> QuantizationReport:
        """The int8 model beside ``model`` (kept or not), logged to the search's run."""
        int8 = quantize_int8(model, request.output / INT8_FILE, request.data, request.max_accuracy_drop)
        run_id = request.search_run_id
        tracker.log_metrics(run_id, {"int8_test_accuracy": int8.test_accuracy_int8, "int8_accuracy_drop": int8.accuracy_drop})
        tracker.set_tags(run_id, {"int8": int8.reason})
        if int8.kept:
            tracker.log_artifact(run_id, request.output / INT8_FILE, "model")
        return int8
