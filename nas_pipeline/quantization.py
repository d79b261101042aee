"""int8 that keeps its accuracy: static post-training quantization of the exported model with onnxruntime's tools.

The float model is quantized to the QDQ format (int8 weights per channel, uint8 activations), calibrated on
the train split. Both models are then measured on the test split (accuracy) and on random inputs (median
latency at batch 1 and 64). The int8 model is kept only when it loses at most ``max_accuracy_drop`` test
accuracy; otherwise the report says why it was dropped. Either way, the report goes into the model card.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas_core.data.preparation import PreparedData
from nas_pipeline.handoff import CardInputs, HandoffError, measure_latency

INT8_FILE = "model.int8.onnx"
CALIBRATION_SAMPLES = 512
CALIBRATION_BATCH = 64
LATENCY_BATCHES = (1, 64)
EVAL_BATCH = 256


@dataclass(frozen=True)
class QuantizationReport:
    """What int8 quantization gave: kept or not (and why), accuracy and latency before and after."""

    kept: bool
    reason: str
    file: str | None  # INT8_FILE when kept
    test_accuracy_fp32: float
    test_accuracy_int8: float
    accuracy_drop: float
    max_accuracy_drop: float
    latency_ms: dict[str, dict[str, float]]  # batch size -> {"fp32": ms, "int8": ms, "speedup": x}
    method: str = "onnxruntime static quantization, QDQ, int8 weights per channel, uint8 activations, MinMax"
    calibration: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Calibration:
    """Batches of the train split for onnxruntime's calibrator (a ``CalibrationDataReader``)."""

    def __init__(self, name: str, inputs: np.ndarray) -> None:
        self.batches = iter([{name: inputs[i : i + CALIBRATION_BATCH]} for i in range(0, len(inputs), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def accuracy(path: Path, inputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier under onnxruntime."""
    session = _session(path)
    name = session.get_inputs()[0].name
    predicted = np.concatenate(
        [session.run(None, {name: inputs[i : i + EVAL_BATCH]})[0].argmax(axis=1) for i in range(0, len(inputs), EVAL_BATCH)]
    )
    return float((predicted == labels).mean())


def quantize_int8(model_path: Path, dest: Path, data: PreparedData, max_accuracy_drop: float) -> QuantizationReport:
    """Quantize ``model_path`` into ``dest``; keep it only within ``max_accuracy_drop`` of the float model's test
    accuracy (else ``dest`` is removed)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    train = np.ascontiguousarray(data.x["train"][:CALIBRATION_SAMPLES], dtype=np.float32)
    test_x, test_y = np.ascontiguousarray(data.x["test"], dtype=np.float32), np.asarray(data.y["test"])
    name = _session(model_path).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(model_path), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(None):  # onnxruntime prints its calibration progress
            quantize_static(
                str(prepared), str(dest), _Calibration(name, train), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
    before, after = accuracy(model_path, test_x, test_y), accuracy(dest, test_x, test_y)
    fp32, int8 = (measure_latency(p, LATENCY_BATCHES)["per_batch"] for p in (model_path, dest))
    latency = {
        str(a["batch_size"]): {"fp32": a["median_ms"], "int8": b["median_ms"],
                               "speedup": round(a["median_ms"] / b["median_ms"], 3)}
        for a, b in zip(fp32, int8, strict=True)
    }  # fmt: skip
    drop = round(before - after, 6)
    kept = drop <= max_accuracy_drop
    if not kept:
        dest.unlink(missing_ok=True)
    reason = (
        f"kept: test accuracy {after:.4f} vs {before:.4f} (drop {drop:.4f} <= {max_accuracy_drop})"
        if kept
        else f"dropped: test accuracy {after:.4f} vs {before:.4f} loses {drop:.4f}, more than {max_accuracy_drop}"
    )
    return QuantizationReport(
        kept, reason, INT8_FILE if kept else None, round(before, 6), round(after, 6), drop, max_accuracy_drop, latency,
        calibration=f"{len(train)} samples of the train split, batches of {CALIBRATION_BATCH}",
    )  # fmt: skip


def stored_quantizer(max_accuracy_drop: float) -> Callable[[Path, CardInputs, Path], QuantizationReport]:
    """For ``nas export --quantize int8``: quantize a finished search's model with the data version it was trained on,
    read from its project (the card inputs name the dataset and version; the model's folder holds search.json)."""

    def quantize(model: Path, inputs: CardInputs, scratch: Path) -> QuantizationReport:
        from nas_core.data.preparation import DatasetError
        from nas_pipeline.dvc_versioning import DvcDataStore, VersioningError

        saved = json.loads((model.parent / "search.json").read_text())
        project_dir = Path(saved["config"].get("project_dir", "."))
        try:
            data = DvcDataStore(project_dir).load(inputs.dataset, inputs.dataset_version)
        except (VersioningError, DatasetError) as exc:
            raise HandoffError(f"--quantize int8 needs the data the model was trained on: {exc}") from None
        return quantize_int8(model, scratch / INT8_FILE, data, max_accuracy_drop)

    return quantize
