"""The contract of every registered dataset source, on tiny inputs in its real format written here.

Preparing twice gives byte-identical files; the prepared splits load back as float32 inputs of the shape the
source's cheap check announced, with every label in range and no split empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from nas_core.data.base import SOURCES, RawDataset, SourceRequest, create_source, list_sources
from nas_core.data.checks import check_raw
from nas_core.data.preparation import SPLITS, DatasetError, inspect_source, load_prepared, parse_dataset, prepare_dataset
from tests.conftest import REPO_ROOT
from tests.nas_core.data.writers import write_cifar10, write_image_folder, write_mnist

Inputs = list[tuple[str, Path | None]]  # dataset names to prepare, each with its data_root


def _digits(tmp_path: Path) -> Inputs:
    return [("digits", None)]  # shipped with scikit-learn


def _mnist(tmp_path: Path) -> Inputs:
    write_mnist(tmp_path / "root")
    return [("mnist", tmp_path / "root")]


def _fashion_mnist(tmp_path: Path) -> Inputs:
    write_mnist(tmp_path / "root", "FashionMNIST")
    return [("fashion-mnist", tmp_path / "root")]


def _cifar10(tmp_path: Path) -> Inputs:
    write_cifar10(tmp_path / "root")
    return [("cifar10", tmp_path / "root")]


def _imagefolder(tmp_path: Path) -> Inputs:
    return [(f"imagefolder:{write_image_folder(tmp_path / 'pets')}", None)]


def _npz(tmp_path: Path) -> Inputs:
    rng = np.random.default_rng(5)
    y = np.arange(24) % 3
    np.savez(tmp_path / "img.npz", x=rng.integers(0, 256, size=(24, 1, 4, 5), dtype=np.uint8), y=y)
    np.savez(tmp_path / "seq.npz", x=rng.normal(size=(24, 2, 7)).astype(np.float32), y=y)
    return [(f"npz:{tmp_path / 'img.npz'}", None), (f"npz:{tmp_path / 'seq.npz'}", None)]


# source name -> writes tiny inputs in its real format under tmp_path
INPUTS: dict[str, Callable[[Path], Inputs]] = {
    "digits": _digits,
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "npz": _npz,
}


def datasets(source: str, tmp_path: Path) -> Inputs:
    if source not in INPUTS:
        pytest.fail(f"source '{source}' has no tiny inputs for its contract test: add a writer to INPUTS")
    return INPUTS[source](tmp_path)


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("source", list_sources())
def test_preparing_twice_gives_byte_identical_files(source, tmp_path):
    for name, root in datasets(source, tmp_path):
        first = prepare_dataset(name, tmp_path / "a", data_root=root)
        second = prepare_dataset(name, tmp_path / "b", data_root=root)
        assert first.name == second.name
        written = files(first)
        assert {f"{s}_{k}.npy" for s in SPLITS for k in "xy"} | {"meta.json"} == set(written)
        assert written == files(second), name


@pytest.mark.parametrize("source", list_sources())
def test_preparing_again_leaves_identical_files_untouched(source, tmp_path):
    for name, root in datasets(source, tmp_path):
        folder = prepare_dataset(name, tmp_path / "data", data_root=root)
        stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
        os.utime(folder / "meta.json", ns=(1, 1))  # an old stamp: a rewrite would be seen even within one clock tick
        prepare_dataset(name, tmp_path / "data", data_root=root)
        assert (folder / "meta.json").stat().st_mtime_ns == 1, name
        assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "meta.json"} == {
            k: v for k, v in stamps.items() if k != "meta.json"
        }
        assert not list(folder.glob(".*.tmp")), "no temporary file is left behind"


@pytest.mark.parametrize("source", list_sources())
def test_prepared_splits_match_the_check_and_load_back(source, tmp_path):
    for name, root in datasets(source, tmp_path):
        kind, path = parse_dataset(name)
        assert kind == source and (path is not None) == SOURCES[source].takes_path
        dims = inspect_source(name, data_root=root)
        folder = prepare_dataset(name, tmp_path / "data", data_root=root)
        data = load_prepared(tmp_path / "data", name)
        assert data.ndim == dims == len(json.loads((folder / "meta.json").read_text())["input_shape"]) - 1
        assert len(data.mean) == len(data.std) == data.input_shape[0]
        assert all(np.isfinite(data.mean)) and all(s > 0 for s in data.std)
        for split in SPLITS:
            x, y = data.x[split], data.y[split]
            assert len(x) == len(y) > 0, f"{name}: empty {split} split"
            assert x.dtype == np.float32 and x.shape[1:] == data.input_shape and np.isfinite(x).all()
            assert y.dtype == np.int64 and y.min() >= 0 and y.max() < data.num_classes


@pytest.mark.parametrize("source", list_sources())
def test_create_source_reads_the_raw_dataset(source, tmp_path):
    name, root = datasets(source, tmp_path)[0]
    _, path = parse_dataset(name)
    raw = create_source(source, SourceRequest(path, root))
    assert isinstance(raw, RawDataset)
    assert raw.images.ndim in (3, 4) and len(raw.images) == len(raw.labels) > 0
    assert len(raw.classes) >= 2 and raw.scale > 0 and raw.source


@pytest.mark.parametrize("source", [name for name in list_sources() if SOURCES[name].shipped])
def test_a_shipped_source_is_fit_for_a_search_without_inputs(source):
    """The search skips reading a shipped source to check it (seconds at every start): it must need nothing and pass."""
    assert not SOURCES[source].takes_path
    check_raw(create_source(source), source)  # raises DatasetError when it is not fit


def test_sources_are_registered_in_their_documented_order_and_unknown_names_are_errors():
    assert list_sources() == ["digits", "mnist", "fashion-mnist", "cifar10", "imagefolder", "npz"]
    with pytest.raises(ValueError, match=r"unknown dataset source 'nope' \(known: cifar10, digits"):
        create_source("nope")
    with pytest.raises(DatasetError, match="unknown dataset 'nope'; choose one of: digits, mnist"):
        parse_dataset("nope")


def test_sources_do_not_import_the_preparation_module():
    """Imports go one way: preparation -> sources -> base, never back (no import cycle)."""
    script = "import sys, nas_core.data.sources; print('nas_core.data.preparation' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "False"
