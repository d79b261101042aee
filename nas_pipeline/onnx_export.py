"""ONNX export with a dynamic batch dimension, checked by onnx.checker and against PyTorch with onnxruntime."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


_registries: dict[int, Any] = {}  # opset -> torch's registry of ONNX functions, built once in this process
_registries_lock = threading.Lock()


def keep_torchlib_registries() -> None:
    """Make the dynamo exporter build its registry of ONNX functions once per opset in this process, not per export.

    ``torch.onnx.export`` rebuilds it from onnxscript's torch_lib at every call (onnxscript parses each function's
    source again): 0.3 s a call on an idle core here, most of a small network's export, and paid by every search a
    long-lived worker runs. It depends only on the opset; each call gets its own copy of the kept one, so an export
    that adds custom translations changes only its own. Where torch no longer has this private classmethod, exports
    build their own registry as before.
    """
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        return
    build = ONNXRegistry.__dict__.get("from_torchlib")
    if not isinstance(build, classmethod) or hasattr(build.__func__, "__wrapped__"):
        return  # not the classmethod it was, or already kept

    def from_torchlib(cls: type, opset_version: int = ONNXRegistry().opset_version) -> Any:
        with _registries_lock:
            if opset_version not in _registries:
                _registries[opset_version] = build.__func__(cls, opset_version)
            kept = _registries[opset_version]
        own = copy.copy(kept)
        own.functions = {target: list(decompositions) for target, decompositions in kept.functions.items()}
        return own

    from_torchlib.__wrapped__ = build.__func__  # type: ignore[attr-defined]
    ONNXRegistry.from_torchlib = classmethod(from_torchlib)  # type: ignore[method-assign]


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
    keep_torchlib_registries()
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
