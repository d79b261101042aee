"""What a raw dataset must hold before it is prepared or searched: checked once, before anything is written.

A search splits every class 60/20/20 (:func:`nas_core.data.preparation.split_indices`) and needs every class in
every split: at least two training samples (batch norm cannot train on one) and one validation and one test
sample. :data:`MIN_PER_CLASS` samples per class is the fewest for which the split always gives that.
"""

from __future__ import annotations

import numpy as np

from nas_core.data.base import DatasetError, RawDataset

MIN_PER_CLASS = 4  # 60/20/20 of 4 is 2/1/1; of 3 it is 2/1/0 (no test sample), of 2 it is 1/0/1
_CHUNK = 4096  # rows checked at a time: bounded memory for large sources
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_raw(raw: RawDataset, name: str) -> None:
    """Raise DatasetError (one line) unless ``raw`` can be prepared and searched.

    Checks the shapes, the labels (in range, at least 2 classes, :data:`MIN_PER_CLASS` samples of each) and that
    every input divided by ``raw.scale`` is a finite float32 (no NaN, no infinity, nothing past float32's range).
    """
    if raw.images.ndim not in (3, 4) or len(raw.images) != len(raw.labels):
        raise DatasetError(f"dataset '{name}': inputs must be N x C x H x W or N x C x L with one label each")
    if len(raw.classes) < 2:
        raise DatasetError(f"dataset '{name}' has {len(raw.classes)} class; a classifier needs at least 2")
    if len(raw.labels) and (raw.labels.min() < 0 or raw.labels.max() >= len(raw.classes)):
        raise DatasetError(f"dataset '{name}': labels must be in [0, {len(raw.classes)})")
    check_class_sizes(name, raw.classes, np.bincount(raw.labels, minlength=len(raw.classes)).tolist())
    if not 0 < raw.scale < np.inf:
        raise DatasetError(f"dataset '{name}': its scale must be a positive number, not {raw.scale}")
    _check_finite(raw, name)


def check_class_sizes(name: str, classes: list[str], counts: list[int]) -> None:
    """Raise DatasetError unless every class has :data:`MIN_PER_CLASS` samples (``counts[i]`` of ``classes[i]``)."""
    small = [(c, n) for c, n in zip(classes, counts, strict=True) if n < MIN_PER_CLASS]
    if not small:
        return
    shown = ", ".join(f"'{c}' has {n}" for c, n in small[:3]) + (f" and {len(small) - 3} more" if len(small) > 3 else "")
    raise DatasetError(
        f"dataset '{name}' has too few samples ({sum(counts)}): class {shown}; a search needs at least "
        f"{MIN_PER_CLASS} per class (split 60/20/20: 2 train, 1 validation, 1 test)"
    )


def _check_finite(raw: RawDataset, name: str) -> None:
    """The prepared inputs are ``float32(images / scale)``: each must be finite."""
    images = raw.images
    if np.issubdtype(images.dtype, np.integer) and raw.scale >= 1.0:
        return  # integers up to 64 bit divided by at least 1 fit float32 (its max is 3.4e38)
    for start in range(0, len(images), _CHUNK):
        scaled = images[start : start + _CHUNK] / raw.scale
        if not (np.isfinite(scaled).all() and np.abs(scaled).max(initial=0.0) <= _FLOAT32_MAX):
            raise DatasetError(
                f"dataset '{name}' has inputs that are not finite (NaN or infinity) or too large for float32 "
                f"(|x| > {_FLOAT32_MAX:.3g}) once divided by its scale {raw.scale:g}"
            )
