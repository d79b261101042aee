"""ONNX export with a dynamic batch dimension, checked by onnx.checker and against PyTorch with onnxruntime."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas_core.search.checkpoint import partial_file
from nas_core.search.ports import ModelExportError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-4
PARITY_SAMPLES = 64  # a test split smaller than this is topped up from val and train; a tiny dataset gives all it has
FILE_MODE = 0o644  # readable by another user or a non-root container, like every other output


class ExportError(ModelExportError):
    """The exported model failed the checker or does not match PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    samples: int


def _torch_logits(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(inputs)).numpy()


def check_parity(path: Path, model: nn.Module, inputs: np.ndarray) -> float:
    """Max |logit difference| between onnxruntime and PyTorch on ``inputs`` (batched, then one by one)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = _torch_logits(model, inputs)
    batched = session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: inputs[:1]})[0]  # a second batch size: the axis is dynamic
    return float(max(np.abs(batched - expected).max(), np.abs(single - expected[:1]).max()))


def export_onnx(
    model: nn.Module,
    path: Path,
    inputs: np.ndarray,
    metadata: Mapping[str, str],
    tolerance: float = PARITY_TOLERANCE,
) -> ExportReport:
    """Export ``model`` to ``path`` (written atomically, mode 0644), verify it, and embed ``metadata``.

    ``inputs`` are real samples (at least one) used for the onnxruntime-vs-PyTorch
    parity check. The file is written as ``.<name>.tmp`` beside ``path`` first: a kill leaves nothing else behind,
    and the next export (or a resume) removes it.
    """
    import onnx  # here, like onnxruntime: a search imports them only when it exports (a second it does not spend first)

    if len(inputs) < 1:
        raise ExportError("the parity check needs at least 1 input, got none")
    model = model.cpu().eval()
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_file(path)
    try:
        batch = torch.export.Dim("batch", min=1)
        example = np.concatenate([inputs[:2], inputs[:1]])[:2]  # two rows: a batch of 1 would fix the batch axis to 1
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejected the model: {exc}") from None
        diff = check_parity(tmp, model, inputs)
        if not diff <= tolerance:
            raise ExportError(f"ONNX and PyTorch logits differ by {diff:.3g} (> {tolerance:g})")
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path, diff, len(inputs))


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata embedded in an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
