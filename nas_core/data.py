"""Dataset sources -> deterministic prepared splits on disk (``data/<name>/``) and back into memory."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


class DatasetError(ValueError):
    """A dataset name is unknown or its prepared files are missing or broken."""


@dataclass(frozen=True)
class RawDataset:
    """Images as integers (N, C, H, W) with the value that maps to 1.0, and integer labels."""

    images: np.ndarray
    labels: np.ndarray
    scale: float
    classes: list[str]
    source: str


@dataclass(frozen=True)
class PreparedData:
    """Prepared splits in memory; inputs are float32 in [0, 1], normalised inside the model."""

    name: str
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    input_shape: tuple[int, int, int]
    num_classes: int
    classes: list[str]
    mean: list[float]
    std: list[float]


SOURCES: dict[str, Callable[[], RawDataset]] = {}


def register_source(name: str):
    def decorate(loader: Callable[[], RawDataset]):
        SOURCES[name] = loader
        return loader

    return decorate


@register_source("digits")
def load_digits_source() -> RawDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the wheel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.int64).reshape(-1, 1, 8, 8)
    return RawDataset(images, digits.target.astype(np.int64), 16.0, [str(c) for c in range(10)], "sklearn.load_digits")


def check_dataset_name(name: str) -> None:
    if name not in SOURCES:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(sorted(SOURCES))})")


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Stratified train/val/test indices that depend only on the seed and the labels.

    Sorting by a SHA-256 of (seed, index) instead of a library RNG keeps the split, and so the
    DVC hash of the prepared files, identical across numpy and scikit-learn versions.
    """
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for label in np.unique(labels):
        members = sorted(np.flatnonzero(labels == label).tolist(), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
        n_train = round(len(members) * SPLIT_FRACTIONS[0])
        n_val = round(len(members) * SPLIT_FRACTIONS[1])
        parts["train"] += members[:n_train]
        parts["val"] += members[n_train : n_train + n_val]
        parts["test"] += members[n_train + n_val :]
    return {s: np.array(sorted(idx), dtype=np.int64) for s, idx in parts.items()}


def _channel_stats(images: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and std from integer pixels: integer sums are exact, so this is reproducible."""
    n = images.shape[0] * images.shape[2] * images.shape[3]
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = images[:, c].astype(np.int64)
        total, squares = int(channel.sum()), int((channel * channel).sum())
        mean = total / n
        var = squares / n - mean * mean
        means.append(round(mean / scale, 8))
        stds.append(round(math.sqrt(max(var, 1e-12)) / scale, 8))
    return means, stds


def prepare_dataset(name: str, data_dir: Path, seed: int = 0) -> Path:
    """Write ``data_dir/<name>/`` (``{split}_x.npy``, ``{split}_y.npy``, ``meta.json``); same bytes every time."""
    check_dataset_name(name)
    raw = SOURCES[name]()
    splits = split_indices(raw.labels, seed)
    out = Path(data_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    for split, idx in splits.items():
        np.save(out / f"{split}_x.npy", (raw.images[idx] / raw.scale).astype(np.float32))
        np.save(out / f"{split}_y.npy", raw.labels[idx])
    mean, std = _channel_stats(raw.images[splits["train"]], raw.scale)
    meta = {
        "name": name,
        "source": raw.source,
        "seed": seed,
        "input_shape": list(raw.images.shape[1:]),
        "num_classes": len(raw.classes),
        "classes": raw.classes,
        "sizes": {s: int(len(i)) for s, i in splits.items()},
        "normalization": {"mean": mean, "std": std, "input_range": [0.0, 1.0]},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def load_prepared(data_dir: Path, name: str) -> PreparedData:
    """Load the splits written by :func:`prepare_dataset`."""
    folder = Path(data_dir) / name
    try:
        meta = json.loads((folder / "meta.json").read_text())
        x = {s: np.load(folder / f"{s}_x.npy") for s in SPLITS}
        y = {s: np.load(folder / f"{s}_y.npy") for s in SPLITS}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"prepared data in {folder} is missing or unreadable ({exc}); run `nas prepare {name}`") from None
    return PreparedData(
        name=name,
        x=x,
        y=y,
        input_shape=tuple(meta["input_shape"]),
        num_classes=int(meta["num_classes"]),
        classes=list(meta["classes"]),
        mean=list(meta["normalization"]["mean"]),
        std=list(meta["normalization"]["std"]),
    )
