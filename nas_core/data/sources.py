"""The built-in dataset sources: scikit-learn's digits, torchvision's MNIST, Fashion-MNIST and CIFAR-10, image
folders and ``.npz`` arrays, registered in this order.

Each loader returns a :class:`~nas_core.data.base.RawDataset` that :func:`nas_core.data.preparation.prepare_dataset`
turns into the common prepared layout; each ``check_*`` function looks for the source without reading it, so bad
input is reported before anything runs. Errors are :class:`~nas_core.data.base.DatasetError` with one line saying
what is missing and where it was expected.

Nothing here unpickles arbitrary data: ``.npz`` files are read with ``allow_pickle=False``, and CIFAR-10's
python batches (a pickle format) are read with an unpickler that only rebuilds numpy arrays, lists, dicts,
strings and numbers.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nas_core.data.base import DatasetError, RawDataset, SourceRequest, register_source
from nas_core.data.checks import check_class_sizes

DOWNLOAD_HINT = "pass --download on a machine with internet access, or copy the files there"


DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # what load_digits reads, inside scikit-learn's package


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' 64 pixel values and labels, read from scikit-learn's file as ``load_digits`` reads it, without
    importing scikit-learn (its datasets package takes about a second to import, the file 0.03 s to read);
    through ``load_digits`` itself when a release keeps the file elsewhere."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = spec.submodule_search_locations if spec is not None else None
    path = Path(folders[0], *DIGITS_FILE) if folders else None
    if path is not None and path.is_file():
        values = np.loadtxt(path, delimiter=",")
        return values[:, :-1], values[:, -1]
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target


@register_source("digits", shipped=True)
def load_digits_source(request: SourceRequest | None = None) -> RawDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with the wheel."""
    pixels, labels = _digits_arrays()
    images = pixels.astype(np.int64).reshape(-1, 1, 8, 8)
    return RawDataset(images, labels.astype(np.int64), 16.0, [str(c) for c in range(10)], "sklearn.load_digits")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The exception as one line: its type and its message's lines joined (torchvision's span several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _require_root(request: SourceRequest, dataset: str, expected: str) -> Path:
    if request.data_root is None:
        raise DatasetError(f"dataset '{dataset}' reads torchvision's files: pass --data-root FOLDER (holding {expected})")
    return Path(request.data_root)


# ---- MNIST and Fashion-MNIST (torchvision reads the idx files) ----------------------------------
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_check(dataset: str, folder: str):
    def check(request: SourceRequest) -> int:
        root = _require_root(request, dataset, f"{folder}/raw/{MNIST_FILES[0]} ...")
        raw = root / folder / "raw"
        missing = [f for f in MNIST_FILES if not (raw / f).is_file() and not (raw / f"{f}.gz").is_file()]
        if missing and not request.download:
            raise DatasetError(
                f"{dataset} files not found: expected {raw / missing[0]} (or .gz) and the other idx files; {DOWNLOAD_HINT}"
            )
        return 2

    return check


def _unpack_gz(raw: Path) -> None:
    """Unpack ``X.gz`` next to itself when only the gzipped idx file is there (torchvision reads ``X``)."""
    for name in MNIST_FILES:
        target, packed = raw / name, raw / f"{name}.gz"
        if not target.is_file() and packed.is_file():
            tmp = raw / f".{name}.tmp"
            with gzip.open(packed, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, target)


def _load_mnist_like(request: SourceRequest, dataset: str, folder: str) -> RawDataset:
    import torchvision.datasets

    _mnist_check(dataset, folder)(request)
    root = Path(request.data_root)
    try:
        _unpack_gz(root / folder / "raw")
        cls = getattr(torchvision.datasets, folder)
        parts = [cls(str(root), train=train, download=request.download) for train in (True, False)]
    except (OSError, RuntimeError, ValueError, TypeError, AssertionError, EOFError) as exc:
        action = f"download or read {dataset} into" if request.download else f"read {dataset} from"
        raise DatasetError(f"cannot {action} {root / folder / 'raw'} ({_one_line(exc)})") from None
    images = np.concatenate([p.data.numpy() for p in parts])[:, None]  # official train then test, N x 1 x 28 x 28
    labels = np.concatenate([p.targets.numpy() for p in parts]).astype(np.int64)
    return RawDataset(images, labels, 255.0, list(parts[0].classes), f"torchvision.datasets.{folder}")


@register_source("mnist", check=_mnist_check("mnist", "MNIST"))
def load_mnist(request: SourceRequest) -> RawDataset:
    """MNIST (70,000 28x28 digits): ``<data_root>/MNIST/raw/*-idx?-ubyte``, official train and test joined."""
    return _load_mnist_like(request, "mnist", "MNIST")


@register_source("fashion-mnist", check=_mnist_check("fashion-mnist", "FashionMNIST"))
def load_fashion_mnist(request: SourceRequest) -> RawDataset:
    """Fashion-MNIST (70,000 28x28 clothes): ``<data_root>/FashionMNIST/raw/*-idx?-ubyte``."""
    return _load_mnist_like(request, "fashion-mnist", "FashionMNIST")


# ---- CIFAR-10 (python batches: a pickle format) ---------------------------------------------------
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_META = "batches.meta"
_ARRAY = np.zeros(1)
# the only callables a CIFAR batch needs: numpy's array rebuilders (pickle protocols 0-5) and, for
# protocol-2 pickles written by Python 3, codecs.encode (turns latin-1 text back into bytes)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other class or function in the stream is refused."""

    def find_class(self, module: str, name: str) -> Any:
        found = _SAFE_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists")
        return found


def _read_batch(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            entry = ArrayUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(f"cannot read CIFAR-10 file {path} ({_one_line(exc)})") from None
    if not isinstance(entry, dict):
        raise DatasetError(f"CIFAR-10 file {path} does not hold a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def check_cifar10(request: SourceRequest) -> int:
    root = _require_root(request, "cifar10", f"{CIFAR_FOLDER}/data_batch_1 ...")
    missing = [f for f in (*CIFAR_BATCHES, CIFAR_META) if not (root / CIFAR_FOLDER / f).is_file()]
    if missing and not request.download:
        raise DatasetError(
            f"cifar10 files not found: expected {root / CIFAR_FOLDER / missing[0]} and the other batches; {DOWNLOAD_HINT}"
        )
    return 2


def _official_cifar(folder: Path) -> bool:
    """Whether every file has the md5 of the official release (torchvision's table)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    expected = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    return all(check_integrity(str(folder / name), md5) for name, md5 in expected)


@register_source("cifar10", check=check_cifar10)
def load_cifar10(request: SourceRequest) -> RawDataset:
    """CIFAR-10 (60,000 32x32 colour images): ``<data_root>/cifar-10-batches-py/``, the 5 training batches and
    the test batch joined. ``download`` fetches and md5-checks the official archive with torchvision."""
    check_cifar10(request)
    root = Path(request.data_root)
    folder = root / CIFAR_FOLDER
    if request.download and not _official_cifar(folder):
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DatasetError(f"downloading CIFAR-10 into {root} failed ({_one_line(exc)})") from None
    images, labels = [], []
    for name in CIFAR_BATCHES:
        entry = _read_batch(folder / name)
        data, batch_labels = entry.get("data"), entry.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"CIFAR-10 file {folder / name}: 'data' must be a uint8 array of N x 3072")
        if not isinstance(batch_labels, list) or len(batch_labels) != len(data):
            raise DatasetError(f"CIFAR-10 file {folder / name}: 'labels' must be a list with one label per image")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    names = _read_batch(folder / CIFAR_META).get("label_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"CIFAR-10 file {folder / CIFAR_META}: 'label_names' must be a list of names")
    official = "official files, md5 verified" if _official_cifar(folder) else "not the official files (md5 differs)"
    return RawDataset(np.concatenate(images), np.concatenate(labels), 255.0, names, f"CIFAR-10 python batches ({official})")


# ---- a folder of images, one subfolder per class -----------------------------------------------
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _image_files(path: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """The class names and the ``(image file, class index)`` pairs of an image folder, as torchvision lists them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(str(path))
        return classes, make_dataset(str(path), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"image folder '{path}': {_one_line(exc)}") from None


def check_imagefolder(request: SourceRequest) -> int:
    """At least 2 class subfolders, each with :data:`~nas_core.data.checks.MIN_PER_CLASS` image files (listed, not read)."""
    path = Path(request.path)
    if not path.is_dir():
        raise DatasetError(
            f"image folder '{path}' not found; imagefolder:PATH needs a folder with one subfolder of images per class"
        )
    classes = [e.name for e in os.scandir(path) if e.is_dir()]
    if len(classes) < 2:
        raise DatasetError(f"image folder '{path}' has {len(classes)} class subfolder(s); a classifier needs at least 2")
    classes, samples = _image_files(path)
    counts = np.bincount([label for _, label in samples], minlength=len(classes)).tolist()
    check_class_sizes(f"imagefolder:{path}", classes, counts)
    return 2


@register_source("imagefolder", check=check_imagefolder, takes_path=True)
def load_imagefolder(request: SourceRequest) -> RawDataset:
    """Images in ``PATH/<class>/*.png|jpg|...`` (torchvision's ImageFolder layout and extensions).

    Every image is converted to the first image's mode (grayscale ``L`` if it is grayscale, else ``RGB``) and
    resized to its size with PIL's bilinear filter (aspect ratio not kept); ``resize`` records this.
    """
    from PIL import Image, UnidentifiedImageError

    check_imagefolder(request)
    path = Path(request.path)
    classes, samples = _image_files(path)
    images: np.ndarray | None = None
    mode, size, resized = "RGB", (0, 0), 0
    for i, (file, _) in enumerate(samples):
        try:
            with Image.open(file) as image:
                if images is None:  # the first image decides mode and size
                    mode, size = ("L" if image.mode in GRAYSCALE_MODES else "RGB"), image.size
                    images = np.empty((len(samples), 1 if mode == "L" else 3, size[1], size[0]), dtype=np.uint8)
                converted = image.convert(mode)
                if converted.size != size:
                    converted, resized = converted.resize(size, Image.Resampling.BILINEAR), resized + 1
                pixels = np.asarray(converted, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DatasetError(f"cannot read image {file} ({_one_line(exc)})") from None
        images[i] = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    first = Path(samples[0][0]).relative_to(path).as_posix()
    resize = {
        "size": [size[1], size[0]],
        "mode": mode,
        "filter": "PIL bilinear",
        "keep_aspect": False,
        "reference": f"{first} (the first image: every image is converted to its mode and size)",
        "resized": resized,
        "images": len(samples),
    }
    return RawDataset(images, labels, 255.0, list(classes), f"imagefolder:{path.resolve().name}", resize)


# ---- arrays in a .npz file ---------------------------------------------------------------------
def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in a ``.npz`` file, read from the headers only."""
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(handle)
                headers[member.removesuffix(".npy")] = (tuple(shape), np.dtype(dtype))
    except FileNotFoundError:
        raise DatasetError(f"npz file '{path}' not found") from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise DatasetError(f"'{path}' is not a readable .npz file ({_one_line(exc)})") from None
    return headers


def check_npz(request: SourceRequest) -> int:
    """An ``.npz`` with ``x`` (N x C x H x W or N x C x L, numbers) and ``y`` (N integer labels)."""
    path = Path(request.path)
    headers = _npz_headers(path)
    if "x" not in headers or "y" not in headers:
        raise DatasetError(f"npz file '{path}' needs arrays 'x' and 'y' (found: {', '.join(sorted(headers)) or 'none'})")
    (x_shape, x_dtype), (y_shape, y_dtype) = headers["x"], headers["y"]
    if len(x_shape) not in (3, 4):
        raise DatasetError(
            f"npz file '{path}': x has shape {x_shape}; it must be N x C x H x W (images) or N x C x L (sequences)"
        )
    if not (np.issubdtype(x_dtype, np.integer) or np.issubdtype(x_dtype, np.floating)):
        raise DatasetError(f"npz file '{path}': x must hold integers or floats, not {x_dtype}")
    if len(y_shape) != 1 or y_shape[0] != x_shape[0] or not np.issubdtype(y_dtype, np.integer):
        raise DatasetError(f"npz file '{path}': y must be {x_shape[0]} integer labels, got {y_dtype} of shape {y_shape}")
    return len(x_shape) - 2


def _integer_scale(x: np.ndarray, given: float | None, path: Path) -> float:
    """What integer inputs are divided by: ``scale`` from the file, else the dtype's range (8 and 16 bit:
    unsigned by its max, signed by 2**(bits-1)), else 255 for wider integers holding 0..255."""
    if given is not None:
        return given
    info = np.iinfo(x.dtype)
    if info.bits <= 16:
        return float(info.max if info.min == 0 else -info.min)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DatasetError(
            f"npz file '{path}': {x.dtype} inputs outside 0..255 need a 'scale' entry (the value that maps to 1.0)"
        )
    return 255.0


@register_source("npz", check=check_npz, takes_path=True)
def load_npz(request: SourceRequest) -> RawDataset:
    """``x`` (N x C x H x W images or N x C x L sequences) and ``y`` (integer labels) from an ``.npz`` file.

    Optional: ``classes`` (names, y indexes them) and ``scale`` (integer inputs are divided by it). Float
    inputs are kept as they are; without ``classes`` the distinct labels, sorted, become the classes.
    """
    check_npz(request)
    path = Path(request.path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x, y = arrays["x"], arrays["y"]
            classes = arrays["classes"] if "classes" in arrays.files else None
            scale = arrays["scale"] if "scale" in arrays.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"cannot read npz file '{path}' ({_one_line(exc)})") from None
    given = None
    if scale is not None:
        if scale.size != 1 or not np.issubdtype(scale.dtype, np.number) or not 0 < float(scale.item()) < np.inf:
            raise DatasetError(f"npz file '{path}': 'scale' must be one positive number")
        given = float(scale.item())
    if np.issubdtype(x.dtype, np.integer):
        factor = _integer_scale(x, given, path)
    else:
        if not np.isfinite(x).all():
            raise DatasetError(f"npz file '{path}': x holds NaN or infinite values")
        factor = given or 1.0
        x = x if factor == 1.0 else x / factor
        factor = 1.0
    if classes is not None:
        if classes.ndim != 1 or classes.dtype.kind not in "US":
            raise DatasetError(f"npz file '{path}': 'classes' must be a list of names")
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist()]
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DatasetError(f"npz file '{path}': labels must index 'classes' (0..{len(names) - 1})")
        labels = y.astype(np.int64)
    else:
        values = np.unique(y)
        names = [str(v) for v in values.tolist()]
        labels = np.searchsorted(values, y).astype(np.int64)
    return RawDataset(x, labels, factor, names, f"npz:{path.name}")
