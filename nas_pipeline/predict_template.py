#!/usr/bin/env python3
"""Classify images with an ONNX model of this folder, using numpy and onnxruntime only.

Copied into every handoff bundle as ``predict.py``; it imports nothing but the standard library, numpy and
onnxruntime (``pip install numpy onnxruntime``). It applies no preprocessing of its own: see model_card.md.

Input: a ``.npy`` file holding float images in [0, 1] (the range model_card.md states), shape (N, C, H, W), or
one image (C, H, W), already at the model's height and width (nothing is resized). The model normalises
internally. Integer images (uint8, ...) are accepted only with ``--scale S``: they are divided by S, the value
of full intensity (255 for 8-bit images), and nothing else is done to them.

    python predict.py inputs.npy                                  # JSON on stdout
    python predict.py inputs.npy --output predictions.csv         # CSV (format from the extension)
    python predict.py inputs.npy --model model.onnx --batch-size 256 --format json

Output, one entry per input: its index, the predicted class label and index, its probability (softmax of the
model's logits) and the probabilities of every class. Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
CLASSES_KEY = "nas.classes"
PREPROCESSING_KEY = "nas.preprocessing"  # its "input_range" is the range of values the model was trained on


class InputError(Exception):
    """Something is wrong with the command's input; reported as one line, exit code 2."""


def load_session(path: Path) -> ort.InferenceSession:
    if not path.is_file():
        raise InputError(f"model file {path} not found")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise InputError(f"cannot load model {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def class_labels(session: ort.InferenceSession) -> list[str]:
    """Class labels from the model's metadata (``nas.classes``), else the class indices."""
    width = session.get_outputs()[0].shape[-1]
    try:
        labels = json.loads(session.get_modelmeta().custom_metadata_map.get(CLASSES_KEY) or "null")
    except ValueError:
        labels = None
    if isinstance(labels, list) and (not isinstance(width, int) or len(labels) == width):
        return [str(c) for c in labels]
    return [str(i) for i in range(width)] if isinstance(width, int) else []


def input_range(session: ort.InferenceSession) -> tuple[float, float] | None:
    """The range of input values the model takes (its metadata's, else [0, 1]); None: float features, any range."""
    try:
        stored = json.loads(session.get_modelmeta().custom_metadata_map.get(PREPROCESSING_KEY) or "{}")["input_range"]
        if stored is None:
            return None
        return float(stored[0]), float(stored[1])
    except (ValueError, KeyError, TypeError, IndexError):
        return 0.0, 1.0


def load_inputs(path: Path, expected: list, scale: float | None, valid: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """Read ``path`` and check it against the model input ``expected`` (N, C, H, W) and range ``valid``; as float32."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"input file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a .npy array: {exc}") from None
    if not isinstance(x, np.ndarray):
        raise InputError(f"{path} holds several arrays (.npz); save one array of images with numpy.save")
    if x.ndim == len(expected) - 1:
        x = x[None]  # one image
    want = tuple(expected[1:])
    # dims the model names instead of fixing (the batch, say) take any size
    if x.ndim != len(expected) or any(isinstance(n, int) and x.shape[i + 1] != n for i, n in enumerate(want)):
        shape = "x".join(str(d) for d in want)
        raise InputError(f"inputs have shape {tuple(x.shape)}; expected (N, {', '.join(map(str, want))}), images of {shape}")
    if np.issubdtype(x.dtype, np.integer):
        if scale is None:
            raise InputError(f"inputs are integers ({x.dtype}); pass --scale S (full intensity, e.g. 255) to divide them by S")
        x = x.astype(np.float64) / scale
    elif np.issubdtype(x.dtype, np.floating):
        if scale is not None:
            raise InputError("--scale applies to integer inputs only; float inputs must already be in the model's range")
    else:
        raise InputError(f"inputs have dtype {x.dtype}; expected float in [0, 1] (or integers with --scale)")
    if not np.isfinite(x).all():
        raise InputError("inputs contain NaN or infinite values")
    if valid is not None and x.size and (x.min() < valid[0] or x.max() > valid[1]):
        raise InputError(
            f"inputs range over [{x.min():.4g}, {x.max():.4g}]; the model takes values in [{valid[0]:g}, {valid[1]:g}]"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(session: ort.InferenceSession, x: np.ndarray, batch_size: int, classes: int) -> np.ndarray:
    """Class probabilities for every input, ``batch_size`` inputs per onnxruntime call."""
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    parts = [softmax(session.run([output], {name: x[i : i + batch_size]})[0]) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, classes))


def rows(probabilities: np.ndarray, labels: list[str]) -> list[dict]:
    top = probabilities.argmax(axis=1) if len(probabilities) else []
    return [
        {
            "index": i,
            "label": labels[int(k)],
            "class_index": int(k),
            "probability": float(probabilities[i, k]),
            "probabilities": [float(p) for p in probabilities[i]],
        }
        for i, k in enumerate(top)
    ]


def render(predictions: list[dict], labels: list[str], model: Path, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"model": model.name, "classes": labels, "predictions": predictions}, indent=2) + "\n"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "label", "class_index", "probability", *(f"p_{label}" for label in labels)])
    for p in predictions:
        writer.writerow([p["index"], p["label"], p["class_index"], repr(p["probability"]), *map(repr, p["probabilities"])])
    return out.getvalue()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Classify images (.npy, N x C x H x W, floats in [0, 1]) with an ONNX model.")
    parser.add_argument("inputs", type=Path, help=".npy file of images, shape (N, C, H, W) or (C, H, W)")
    parser.add_argument("--model", type=Path, default=HERE / "model.onnx", help="default: the bundle's model.onnx")
    parser.add_argument("--batch-size", type=int, default=64, help="inputs per onnxruntime call (default: 64)")
    parser.add_argument("--scale", type=float, default=None, help="divide integer inputs by this (e.g. 255)")
    parser.add_argument("--format", choices=("json", "csv"), default=None, help="default: csv for a .csv --output, else json")
    parser.add_argument("--output", type=Path, default=None, help="write here instead of stdout")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.batch_size < 1:
            raise InputError("--batch-size must be at least 1")
        if args.scale is not None and not (np.isfinite(args.scale) and args.scale > 0):
            raise InputError("--scale must be a positive number")
        session = load_session(args.model)
        expected = session.get_inputs()[0].shape
        x = load_inputs(args.inputs, expected, args.scale, input_range(session))
        labels = class_labels(session)
        probabilities = predict(session, x, args.batch_size, len(labels))
        fmt = args.format or ("csv" if args.output is not None and args.output.suffix.lower() == ".csv" else "json")
        text = render(rows(probabilities, labels), labels, args.model, fmt)
        if args.output is None:
            sys.stdout.write(text)
        else:
            try:
                args.output.write_text(text)
            except OSError as exc:
                raise InputError(f"cannot write {args.output}: {exc.strerror}") from None
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
