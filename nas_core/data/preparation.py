"""Dataset sources -> deterministic prepared splits on disk (``data/<folder>/``) and back into memory.

A dataset is named ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10`` (torchvision's files under a
``data_root``), ``imagefolder:PATH`` (a folder per class) or ``npz:PATH`` (arrays ``x`` and ``y``): a source
registered in :mod:`nas_core.data.base` by :mod:`nas_core.data.sources`. Every source is prepared into the same
layout: ``{train,val,test}_{x,y}.npy`` (x float32, N x C x H x W images or N x C x L sequences) and
``meta.json``, split 60/20/20, stratified by a hash of (seed, index).
"""

from __future__ import annotations

import filecmp
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas_core.data.base import SOURCES, DatasetError, RawDataset, SourceRequest, create_source
from nas_core.data.checks import check_raw

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
_CHUNK = 4096  # rows converted or summed at a time: bounded memory for large sources
# data.dvc pins the prepared bytes of these datasets: their meta.json keeps its original keys (no ndim,
# resize, scale); load_prepared fills in the defaults.
_PINNED_META = {"digits"}


@dataclass(frozen=True)
class PreparedData:
    """Prepared splits in memory; inputs are float32 (``input_range``), normalised inside the model."""

    name: str
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    num_classes: int
    classes: list[str]
    mean: list[float]
    std: list[float]
    source: str = ""
    resize: dict[str, Any] | None = None
    input_range: tuple[float, float] | None = (0.0, 1.0)  # None: float features, no fixed range

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 for images (C, H, W), 1 for sequences (C, L)."""
        return len(self.input_shape) - 1


def known_datasets() -> str:
    return ", ".join(f"{name}:PATH" if SOURCES[name].takes_path else name for name in SOURCES)


def parse_dataset(name: str) -> tuple[str, Path | None]:
    """``(source, path)`` of a dataset name: ``mnist`` -> ("mnist", None), ``npz:a/b.npz`` -> ("npz", Path("a/b.npz"))."""
    kind, colon, rest = name.partition(":")
    source = SOURCES.get(kind)
    if source is None:
        raise DatasetError(f"unknown dataset '{name}'; choose one of: {known_datasets()}")
    if source.takes_path and not rest:
        raise DatasetError(f"dataset '{kind}' needs a path: {kind}:PATH")
    if colon and not source.takes_path:
        raise DatasetError(f"dataset '{kind}' takes no path (got '{name}'); known: {known_datasets()}")
    return kind, Path(rest) if source.takes_path else None


def check_dataset_name(name: str) -> None:
    """Raise DatasetError unless ``name`` is a known source (with a path where it takes one)."""
    parse_dataset(name)


def dataset_folder(name: str) -> str:
    """The folder under ``data/`` a dataset is prepared into: the source name, or ``<source>-<file or folder name>``.

    Only the last path component is used, so the prepared files (and their DVC hash) do not depend on
    where the source lies on a machine; two sources with the same file name share a folder.
    """
    kind, path = parse_dataset(name)
    if path is None:
        return kind
    stem = Path(os.path.abspath(path)).name
    stem = stem.removesuffix(".npz") if kind == "npz" else stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    return f"{kind}-{slug}" if slug else kind


def inspect_source(name: str, data_root: Path | None = None, download: bool = False) -> int:
    """Check that a dataset's source is there without reading it (DatasetError says what is missing);
    return its spatial dimensions: 2 for images, 1 for sequences."""
    kind, path = parse_dataset(name)
    return SOURCES[kind].check(SourceRequest(path, Path(data_root) if data_root else None, download))


def ships_with_a_library(name: str) -> bool:
    """Whether the dataset's source ships inside a library (``digits``): always there and fit."""
    kind, _ = parse_dataset(name)
    return SOURCES[kind].shipped


def read_source(name: str, data_root: Path | None = None, download: bool = False) -> RawDataset:
    """Read a dataset's source and check it is fit for a search (:func:`nas_core.data.checks.check_raw`);
    DatasetError (one line) says what is wrong. Nothing is written."""
    kind, path = parse_dataset(name)
    raw = create_source(kind, SourceRequest(path, Path(data_root) if data_root else None, download))
    check_raw(raw, name)
    return raw


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
    """Per-channel mean and std of the inputs divided by ``scale``, computed reproducibly.

    Integer inputs: exact integer sums. Float inputs: exactly rounded sums (``math.fsum``) of the float32
    values the model sees, in two passes, rounded to 9 significant digits.
    """
    count = images.shape[0] * math.prod(images.shape[2:])
    means, stds = [], []
    for c in range(images.shape[1]):
        chunks = [images[i : i + _CHUNK, c] for i in range(0, images.shape[0], _CHUNK)]
        if np.issubdtype(images.dtype, np.integer):
            total = sum(int(p.astype(np.int64).sum()) for p in chunks)
            squares = sum(int(np.square(p.astype(np.int64)).sum()) for p in chunks)
            mean = total / count
            var = squares / count - mean * mean
            means.append(round(mean / scale, 8))
            stds.append(round(math.sqrt(max(var, 1e-12)) / scale, 8))
        else:
            values = [p.astype(np.float32) for p in chunks]  # what the model sees; exact in float64
            mean = math.fsum(itertools.chain.from_iterable(v.ravel().tolist() for v in values)) / count
            squares = (np.square(v.astype(np.float64).ravel() - mean).tolist() for v in values)
            var = math.fsum(itertools.chain.from_iterable(squares)) / count
            means.append(float(f"{mean:.9g}"))
            stds.append(float(f"{math.sqrt(max(var, 1e-12)):.9g}"))
    return means, stds


def _range(stored: Any) -> tuple[float, float] | None:
    return None if stored is None or None in stored else (float(stored[0]), float(stored[1]))


def _scaled(images: np.ndarray, idx: np.ndarray, scale: float) -> np.ndarray:
    """``(images[idx] / scale).astype(float32)``, a chunk at a time (same values, bounded memory)."""
    out = np.empty((len(idx), *images.shape[1:]), dtype=np.float32)
    for start in range(0, len(idx), _CHUNK):
        out[start : start + _CHUNK] = images[idx[start : start + _CHUNK]] / scale
    return out


def _replace_if_changed(tmp: Path, path: Path) -> None:
    """Move ``tmp`` over ``path``, unless ``path`` already holds the same bytes: then it is kept, with its mtime, so
    DVC does not hash it again and a search can tell that nothing changed."""
    if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
        tmp.unlink()
    else:
        os.replace(tmp, path)


def _save(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    _replace_if_changed(tmp, path)


def prepare_dataset(name: str, data_dir: Path, seed: int = 0, data_root: Path | None = None, download: bool = False) -> Path:
    """Write ``data_dir/<folder>/`` (``{split}_x.npy``, ``{split}_y.npy``, ``meta.json``); same bytes every time,
    and a file that already holds them is left untouched.

    ``data_root`` is where torchvision's datasets are (``download`` fetches them there when missing).
    The source is read and checked before anything is written.
    """
    kind, _ = parse_dataset(name)
    raw = read_source(name, data_root, download)
    splits = split_indices(raw.labels, seed)
    folder = dataset_folder(name)
    out = Path(data_dir) / folder
    out.mkdir(parents=True, exist_ok=True)
    low, high = math.inf, -math.inf
    for split, idx in splits.items():
        x = _scaled(raw.images, idx, raw.scale)
        low, high = min(low, float(x.min())), max(high, float(x.max()))
        _save(out / f"{split}_x.npy", x)
        _save(out / f"{split}_y.npy", raw.labels[idx])
    if np.issubdtype(raw.images.dtype, np.integer):  # scaled integers: the nominal [0, 1] ([-1, 1] when signed), or wider
        low, high = (0.0 if low >= 0 else min(low, -1.0)), max(1.0, high)
    else:  # float features have no nominal range; new data may lie outside what training saw
        low, high = None, None
    mean, std = _channel_stats(raw.images[splits["train"]], raw.scale)
    meta: dict[str, Any] = {
        "name": folder,
        "source": raw.source,
        "seed": seed,
        "input_shape": list(raw.images.shape[1:]),
        "num_classes": len(raw.classes),
        "classes": raw.classes,
        "sizes": {s: int(len(i)) for s, i in splits.items()},
        "normalization": {"mean": mean, "std": std, "input_range": [low, high]},
    }
    if kind not in _PINNED_META:
        meta.update(ndim=raw.images.ndim - 2, resize=raw.resize, scale=float(raw.scale))
    tmp = out / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    _replace_if_changed(tmp, out / "meta.json")
    return out


def load_prepared(data_dir: Path, name: str) -> PreparedData:
    """Load the splits written by :func:`prepare_dataset` for the dataset ``name``."""
    folder = Path(data_dir) / dataset_folder(name)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        x = {s: np.load(folder / f"{s}_x.npy", allow_pickle=False) for s in SPLITS}
        y = {s: np.load(folder / f"{s}_y.npy", allow_pickle=False) for s in SPLITS}
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"prepared data in {folder} is missing or unreadable ({exc}); run `nas prepare --dataset {name}`"
        ) from None
    normalization = meta["normalization"]
    return PreparedData(
        name=name,
        x=x,
        y=y,
        input_shape=tuple(meta["input_shape"]),
        num_classes=int(meta["num_classes"]),
        classes=list(meta["classes"]),
        mean=list(normalization["mean"]),
        std=list(normalization["std"]),
        source=str(meta.get("source", "")),
        resize=meta.get("resize"),
        input_range=_range(normalization.get("input_range", (0.0, 1.0))),
    )
