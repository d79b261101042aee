"""Writers of tiny files in the real formats of every dataset source (MNIST idx, CIFAR-10 pickles, image folders,
``.npz``), shared by the source tests and the source contract test."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

from nas_core.data.sources import CIFAR_BATCHES

N_PER_SPLIT = {"train": 260, "t10k": 90}  # 35 per class: 7 test images each, 70 for the ONNX parity check (64)


def write_idx(path: Path, array: np.ndarray, packed: bool = False) -> None:
    """An idx (ubyte) file as MNIST ships it: magic 0x0000 08 <ndim>, big-endian sizes, raw bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if packed:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(body))
    else:
        path.write_bytes(body)


def class_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Noise plus a bright band whose position depends on the class: learnable, like a real dataset."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.int64)
    rows = shape[-2] if len(shape) > 1 else shape[-1]
    for i, label in enumerate(labels):
        band = int(label) * rows // 10
        images[i, ..., band : band + 2, :] = 250
    return images.astype(np.uint8)


def write_mnist(root: Path, folder: str = "MNIST", packed: bool = False) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    written = {}
    for i, (prefix, n) in enumerate(N_PER_SPLIT.items()):
        labels = np.arange(n) % 10
        images = class_images(labels, (28, 28), seed=i)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, packed)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, packed)
        written[prefix] = images
    return written


def write_cifar10(root: Path, per_batch: int = 7, protocol: int = 2) -> np.ndarray:
    """CIFAR-10's python batches: pickled dicts with a uint8 N x 3072 array (channel planes) and a label list."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = []
    for b, name in enumerate(CIFAR_BATCHES):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        batch = {"batch_label": f"batch {b}", "labels": labels, "data": data, "filenames": [f"img{i}.png" for i in labels]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        images.append(data)
    meta = {"num_cases_per_batch": per_batch, "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return np.concatenate(images).reshape(-1, 3, 32, 32)


def write_image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(2)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            size = (12, 10) if (c, i) != (1, 2) else (20, 16)  # (width, height); one image of another size
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGB")
            if (c, i) == (2, 3):
                image = image.convert("L")  # a grayscale image in a colour dataset
            image.save(root / name / f"{i}.png")
        (root / name / "notes.txt").write_text("not an image: skipped")
    return root


def write_unfit_datasets(root: Path) -> dict[str, str]:
    """Datasets a search must refuse before it starts, one of each kind: dataset name -> words of its error line."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    arrays = {
        "nan": ({"x": np.where(rng.random((40, 1, 6)) < 0.1, np.nan, 0.5), "y": y}, "NaN or infinite"),
        "inf": ({"x": np.full((40, 1, 6), np.inf, np.float32), "y": y}, "NaN or infinite"),
        "huge": ({"x": np.full((40, 1, 6), 1e39), "y": y}, "too large for float32"),
        "one-class": ({"x": rng.random((40, 1, 6)), "y": np.zeros(40, int)}, "has 1 class; a classifier needs at least 2"),
        "three": ({"x": rng.random((3, 1, 6)), "y": np.array([0, 1, 0])}, "too few samples (3)"),
        "negative-scale": ({"x": np.zeros((40, 1, 6), np.uint8), "y": y, "scale": np.array(-1.0)}, "'scale' must be one"),
    }
    bad = {}
    for name, (content, message) in arrays.items():
        np.savez(root / f"{name}.npz", **content)
        bad[f"npz:{root / name}.npz"] = message
    empty = write_image_folder(root / "empty-class")
    (empty / "owl").mkdir()
    bad[f"imagefolder:{empty}"] = "class 'owl' has 0"
    corrupt = write_image_folder(root / "corrupt")
    (corrupt / "dog" / "9.png").write_bytes(b"not a png")
    bad[f"imagefolder:{corrupt}"] = "cannot read image"
    return bad
