"""Dataset sources: tiny real-format files written here (MNIST idx, CIFAR-10 pickles, image folders, .npz)
go through the real loaders, the prepared layout, `nas prepare`, a tiny search with ONNX export, and `dvc repro`."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import onnx
import pytest

from flows.cli import EXIT_USAGE, main
from nas_core.data import sources
from nas_core.data.preparation import (
    SPLITS,
    DatasetError,
    SourceRequest,
    check_dataset_name,
    dataset_folder,
    inspect_source,
    load_prepared,
    prepare_dataset,
)
from nas_core.data.sources import ArrayUnpickler, load_cifar10
from nas_pipeline import dvc_versioning as versioning
from tests.conftest import REPO_ROOT
from tests.nas_core.data.writers import write_cifar10, write_image_folder, write_mnist


# ---- names, folders and checks ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "folder"),
    [("digits", "digits"), ("mnist", "mnist"), ("cifar10", "cifar10"), ("npz:/data/my seq.npz", "npz-my-seq"),
     ("imagefolder:/data/flowers/", "imagefolder-flowers")],
)  # fmt: skip
def test_dataset_names_and_their_prepared_folders(name, folder):
    check_dataset_name(name)
    assert dataset_folder(name) == folder


@pytest.mark.parametrize(
    ("name", "message"),
    [("imagenet", "unknown dataset 'imagenet'"), ("npz", "needs a path: npz:PATH"), ("npz:", "needs a path"),
     ("mnist:/x", "takes no path")],
)  # fmt: skip
def test_bad_dataset_names_are_one_line_errors(name, message):
    with pytest.raises(DatasetError, match=message) as info:
        check_dataset_name(name)
    assert "\n" not in str(info.value)


def test_missing_torchvision_files_say_where_they_belong_and_how_to_get_them(tmp_path):
    with pytest.raises(DatasetError, match="pass --data-root"):
        inspect_source("mnist")
    with pytest.raises(DatasetError) as info:
        inspect_source("mnist", tmp_path)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in str(info.value)
    assert "--download" in str(info.value)
    with pytest.raises(DatasetError, match="cifar-10-batches-py/data_batch_1.*--download"):
        inspect_source("cifar10", tmp_path)
    assert inspect_source("cifar10", tmp_path, download=True) == 2  # the files will come from the download


# ---- loaders ---------------------------------------------------------------------------------------
def test_mnist_idx_files_are_read_by_torchvision_and_prepared(tmp_path):
    written = write_mnist(tmp_path / "root")
    out = prepare_dataset("mnist", tmp_path / "data", data_root=tmp_path / "root")
    data = load_prepared(tmp_path / "data", "mnist")
    assert out == tmp_path / "data" / "mnist"
    assert data.input_shape == (1, 28, 28) and data.ndim == 2 and data.num_classes == 10
    assert data.classes[0] == "0 - zero"  # torchvision's class names
    assert [len(data.y[s]) for s in SPLITS] == [210, 70, 70]  # official train and test joined, then split 60/20/20
    assert all(data.x[s].dtype == np.float32 for s in SPLITS)
    pixels = np.sort(np.concatenate([data.x[s].ravel() for s in SPLITS]))
    expected = np.sort(np.concatenate([written["train"], written["t10k"]]).ravel() / 255.0).astype(np.float32)
    np.testing.assert_array_equal(pixels, expected)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "torchvision.datasets.MNIST"
    assert meta["ndim"] == 2 and meta["resize"] is None and meta["scale"] == 255.0
    assert meta["normalization"]["input_range"] == [0.0, 1.0]  # nominal: a 255 pixel is valid input though none was seen
    assert 0 < meta["normalization"]["mean"][0] < 1 and 0 < meta["normalization"]["std"][0] < 1


def test_gzipped_fashion_mnist_files_are_unpacked_and_read(tmp_path):
    write_mnist(tmp_path / "root", "FashionMNIST", packed=True)
    assert inspect_source("fashion-mnist", tmp_path / "root") == 2
    prepare_dataset("fashion-mnist", tmp_path / "data", data_root=tmp_path / "root")
    data = load_prepared(tmp_path / "data", "fashion-mnist")
    assert data.classes[0] == "T-shirt/top" and data.input_shape == (1, 28, 28)
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_a_broken_idx_file_is_a_one_line_error(tmp_path):
    write_mnist(tmp_path / "root")
    (tmp_path / "root" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DatasetError, match="cannot read mnist") as info:
        prepare_dataset("mnist", tmp_path / "data", data_root=tmp_path / "root")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists(), "nothing is written when the source cannot be read"


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_cifar10_batches_are_read_with_the_array_only_unpickler(tmp_path, protocol):
    images = write_cifar10(tmp_path / "root", protocol=protocol)
    raw = load_cifar10(SourceRequest(data_root=tmp_path / "root"))
    np.testing.assert_array_equal(raw.images, images)
    assert raw.classes == [f"class{i}" for i in range(10)]
    assert raw.labels.tolist() == [i % 10 for i in range(42)]
    assert "not the official files" in raw.source  # torchvision's md5 table tells the official release apart
    prepare_dataset("cifar10", tmp_path / "data", data_root=tmp_path / "root")
    data = load_prepared(tmp_path / "data", "cifar10")
    assert data.input_shape == (3, 32, 32) and len(data.mean) == 3


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    write_cifar10(tmp_path / "root")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "root" / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": Exploit()}))
    with pytest.raises(DatasetError, match=r"refusing to load io\.open"):
        prepare_dataset("cifar10", tmp_path / "data", data_root=tmp_path / "root")
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        ArrayUnpickler(io.BytesIO(pickle.dumps([Exploit()]))).load()


def test_image_folder_is_converted_to_the_first_images_size_and_mode(tmp_path):
    folder = write_image_folder(tmp_path / "pets")
    assert inspect_source(f"imagefolder:{folder}") == 2
    out = prepare_dataset(f"imagefolder:{folder}", tmp_path / "data")
    data = load_prepared(tmp_path / "data", f"imagefolder:{folder}")
    assert out.name == "imagefolder-pets"
    assert data.classes == ["cat", "dog", "fox"] and data.input_shape == (3, 10, 12)
    assert sum(len(data.y[s]) for s in SPLITS) == 12
    meta = json.loads((out / "meta.json").read_text())
    assert meta["resize"] == {
        "size": [10, 12], "mode": "RGB", "filter": "PIL bilinear", "keep_aspect": False,
        "reference": "cat/0.png (the first image: every image is converted to its mode and size)", "resized": 1, "images": 12,
    }  # fmt: skip
    assert meta["source"] == "imagefolder:pets" and meta["ndim"] == 2
    assert data.resize == meta["resize"]


def test_image_folder_errors(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(DatasetError, match="1 class subfolder"):
        inspect_source(f"imagefolder:{tmp_path / 'one'}")
    with pytest.raises(DatasetError, match="not found"):
        inspect_source(f"imagefolder:{tmp_path / 'nope'}")
    folder = write_image_folder(tmp_path / "pets")
    (folder / "dog" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*9\.png"):
        prepare_dataset(f"imagefolder:{folder}", tmp_path / "data")


def test_npz_images_and_sequences(tmp_path):
    rng = np.random.default_rng(3)
    y = np.repeat([3, 7], 10)
    np.savez(tmp_path / "img.npz", x=rng.integers(0, 256, size=(20, 1, 5, 6), dtype=np.uint8), y=y)
    np.savez(tmp_path / "seq.npz", x=rng.normal(5.0, 2.0, size=(20, 2, 9)).astype(np.float32), y=np.arange(20) % 2,
             classes=np.array(["calm", "storm"]))  # fmt: skip
    np.savez(tmp_path / "pcm.npz", x=rng.integers(-32768, 32767, size=(20, 1, 16), dtype=np.int16), y=y)
    assert [inspect_source(f"npz:{tmp_path / n}.npz") for n in ("img", "seq", "pcm")] == [2, 1, 1]

    prepare_dataset(f"npz:{tmp_path / 'img.npz'}", tmp_path / "data")
    image = load_prepared(tmp_path / "data", f"npz:{tmp_path / 'img.npz'}")
    assert image.input_shape == (1, 5, 6) and image.classes == ["3", "7"]  # distinct labels, sorted, become the classes
    assert set(np.concatenate([image.y[s] for s in SPLITS]).tolist()) == {0, 1}
    assert max(float(image.x[s].max()) for s in SPLITS) <= 1.0  # uint8 / 255

    out = prepare_dataset(f"npz:{tmp_path / 'seq.npz'}", tmp_path / "data")
    seq = load_prepared(tmp_path / "data", f"npz:{tmp_path / 'seq.npz'}")
    assert seq.input_shape == (2, 9) and seq.ndim == 1 and seq.classes == ["calm", "storm"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ndim"] == 1 and meta["scale"] == 1.0 and meta["source"] == "npz:seq.npz"
    assert 4.0 < seq.mean[0] < 6.0 and 1.5 < seq.std[0] < 2.5  # floats are kept as they are, normalised in the model
    train = seq.x["train"].astype(np.float64)
    np.testing.assert_allclose(seq.mean, train.mean(axis=(0, 2)), rtol=1e-7)
    np.testing.assert_allclose(seq.std, train.std(axis=(0, 2)), rtol=1e-7)

    prepare_dataset(f"npz:{tmp_path / 'pcm.npz'}", tmp_path / "data")
    pcm = load_prepared(tmp_path / "data", f"npz:{tmp_path / 'pcm.npz'}")
    values = np.concatenate([pcm.x[s].ravel() for s in SPLITS])
    assert values.min() >= -1.0 and values.max() < 1.0  # int16 / 32768
    assert pcm.input_range == (-1.0, 1.0)  # signed integers: the nominal range


def test_npz_preparation_is_deterministic(tmp_path):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "seq.npz", x=rng.normal(size=(30, 3, 7)), y=np.arange(30) % 3)
    a = prepare_dataset(f"npz:{tmp_path / 'seq.npz'}", tmp_path / "a")
    b = prepare_dataset(f"npz:{tmp_path / 'seq.npz'}", tmp_path / "b")
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    for name in os.listdir(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize(
    ("arrays", "message"),
    [({"x": np.zeros((4, 1, 3))}, "needs arrays 'x' and 'y'"),
     ({"x": np.zeros((4, 3)), "y": np.zeros(4, int)}, "must be N x C x H x W"),
     ({"x": np.zeros((4, 1, 3)), "y": np.zeros(5, int)}, "y must be 4 integer labels"),
     ({"x": np.zeros((4, 1, 3)), "y": np.zeros(4)}, "y must be 4 integer labels"),
     ({"x": np.full((4, 1, 3), np.nan), "y": np.arange(4) % 2}, "NaN"),
     ({"x": np.full((4, 1, 3), 1000), "y": np.arange(4) % 2}, "need a 'scale' entry"),
     ({"x": np.zeros((4, 1, 3), object), "y": np.arange(4) % 2}, "integers or floats"),
     ({"x": np.zeros((4, 1, 3)), "y": np.zeros(4, int)}, "at least 2"),
     ({"x": np.zeros((4, 1, 3)), "y": np.arange(4) % 2, "classes": np.array(["a"])}, "must index 'classes'")],
)  # fmt: skip
def test_bad_npz_files_are_one_line_errors(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message) as info:
        inspect_source(f"npz:{path}")
        prepare_dataset(f"npz:{path}", tmp_path / "data")
    assert "\n" not in str(info.value)


def test_not_an_npz_file(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        inspect_source(f"npz:{tmp_path / 'x.npz'}")
    with pytest.raises(DatasetError, match="not found"):
        inspect_source(f"npz:{tmp_path / 'missing.npz'}")


@pytest.mark.slow
def test_digits_still_reproduce_the_committed_data_version(project):
    """The default's prepared bytes are pinned by data.dvc: the new sources must not change them."""
    versioning.ensure_repo(project)
    prepare_dataset("digits", project / "data")
    assert "ndim" not in json.loads((project / "data" / "digits" / "meta.json").read_text())
    assert versioning.track_data(project) == versioning.tracked_version(REPO_ROOT)


def test_digits_read_from_scikit_learns_file_are_load_digits_exactly(monkeypatch):
    from sklearn.datasets import load_digits

    reference = load_digits()
    read = sources.load_digits_source()
    assert np.array_equal(read.images, reference.images.astype(np.int64).reshape(-1, 1, 8, 8))
    assert np.array_equal(read.labels, reference.target) and read.labels.dtype == np.int64
    # a release that keeps the file elsewhere: load_digits itself, the same arrays
    monkeypatch.setattr(sources, "DIGITS_FILE", ("no", "such", "file.csv.gz"))
    again = sources.load_digits_source()
    assert np.array_equal(again.images, read.images) and np.array_equal(again.labels, read.labels)


@pytest.mark.slow  # a fresh interpreter
def test_reading_the_digits_imports_no_scikit_learn(tmp_path):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom nas_core.data.sources import load_digits_source\n"
        "assert len(load_digits_source().labels) == 1797\nprint(sorted(m for m in sys.modules if m.startswith('sklearn')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---- the command line ------------------------------------------------------------------------------
def _bad_input(capsys, args, expected):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE
    assert len(err.splitlines()) == 1, err
    assert expected in err


def test_cli_reports_missing_sources_and_bad_names_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _bad_input(capsys, ["prepare", "--dataset", "mnist", "--data-root", str(tmp_path)], "pass --download")
    _bad_input(capsys, ["prepare", "--dataset", "npz"], "needs a path")
    _bad_input(capsys, ["search", "--dataset", "cifar10", "--data-root", str(tmp_path)], "cifar10 files not found")
    _bad_input(capsys, ["search", "--dataset", "mnist"], "pass --data-root")
    _bad_input(capsys, ["search", "--dataset", "npz:nothing.npz"], "not found")
    assert sorted(os.listdir(tmp_path)) == [], "bad input writes nothing"


@pytest.mark.slow
def test_cli_prepare_writes_tracks_and_pushes_an_image_folder(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    folder = write_image_folder(project.parent / "pets")
    assert main(["prepare", "--dataset", f"imagefolder:{folder}"]) == 0
    assert "prepared imagefolder:" in capsys.readouterr().out
    assert (project / "data" / "imagefolder-pets" / "train_x.npy").is_file()
    assert versioning.data_changes(project) == {}
    assert (project / ".dvc-remote").is_dir()


# ---- a tiny real search on MNIST-format files ------------------------------------------------------
@pytest.mark.slow
def test_tiny_search_on_mnist_files_exports_onnx(project):
    from nas_core.config import SearchConfig
    from nas_core.evaluation.worker import evaluate
    from nas_pipeline.pipeline import build_search

    write_mnist(project.parent / "root")
    config = SearchConfig(
        dataset="mnist", data_root=project.parent / "root", project_dir=project, output=project / "out",
        epochs=1, population=2, budget=2, workers=1,
    )  # fmt: skip
    run = build_search(config, search_id="mnist")
    assert run.config.space == "image" and run.config.experiment_name == "nas-mnist"
    run.prepare()
    while jobs := run.propose():
        for job in jobs:
            run.record(evaluate(job))
        run.select()
    assert [r.status for r in run.records] == ["ok", "ok"]
    report = run.export()
    model = onnx.load(str(report.path))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 28, 28] and isinstance(dims[0], str)
    assert report.max_abs_diff <= 1e-4 and report.samples == 70
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["nas.dataset"] == "mnist" and json.loads(meta["nas.classes"])[0] == "0 - zero"
    assert run.dataset.version == versioning.tracked_version(project)


# ---- dvc.yaml: `dvc repro` re-prepares when the source or the parameters change ----------------------
