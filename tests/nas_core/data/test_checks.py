"""What a dataset must hold for a search, checked on the raw source before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

from nas_core.data.base import RawDataset
from nas_core.data.checks import MIN_PER_CLASS, check_raw
from nas_core.data.preparation import SPLITS, DatasetError, inspect_source, load_prepared, prepare_dataset, split_indices
from tests.nas_core.data.writers import write_image_folder


def _every_split_has_every_class(labels: np.ndarray) -> bool:
    """Each split holds each class, training at least twice (batch norm cannot train on one sample)."""
    splits = split_indices(labels, seed=0)
    counts = {s: np.bincount(labels[splits[s]], minlength=labels.max() + 1) for s in SPLITS}
    return counts["train"].min() >= 2 and counts["val"].min() >= 1 and counts["test"].min() >= 1


def test_min_per_class_is_the_fewest_samples_for_which_the_split_keeps_every_class_everywhere():
    for n in range(MIN_PER_CLASS, 120):
        assert _every_split_has_every_class(np.repeat([0, 1], n)), n
    assert not _every_split_has_every_class(np.repeat([0, 1], MIN_PER_CLASS - 1))


def _raw(images, labels, scale=1.0, classes=("a", "b")) -> RawDataset:
    return RawDataset(np.asarray(images), np.asarray(labels, dtype=np.int64), scale, list(classes), "test")


GOOD_X = np.zeros((8, 1, 3), np.float32)
GOOD_Y = np.arange(8) % 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [(_raw(GOOD_X, np.zeros(8), classes=("a",)), "has 1 class; a classifier needs at least 2"),
     (_raw(GOOD_X, GOOD_Y * 2), r"labels must be in \[0, 2\)"),
     (_raw(GOOD_X[:7], GOOD_Y[:7]), r"too few samples \(7\): class 'b' has 3; a search needs at least 4 per class"),
     (_raw(GOOD_X, GOOD_Y, classes=("a", "b", "c")), "class 'c' has 0"),
     (_raw(np.where(np.eye(8, 3)[:, None] > 0, np.nan, 0.0), GOOD_Y), "not finite"),
     (_raw(np.full((8, 1, 3), -np.inf), GOOD_Y), "not finite"),
     (_raw(np.full((8, 1, 3), 1e39), GOOD_Y), "too large for float32"),  # finite in float64, infinite in float32
     (_raw(np.full((8, 1, 3), 255, np.uint8), GOOD_Y, scale=1e-37), "too large for float32"),
     (_raw(GOOD_X, GOOD_Y, scale=-1.0), "scale must be a positive number"),
     (_raw(np.zeros((8, 3)), GOOD_Y), "inputs must be N x C x H x W")],
)  # fmt: skip
def test_unfit_datasets_are_one_line_errors(raw, message):
    with pytest.raises(DatasetError, match=message) as info:
        check_raw(raw, "npz:x.npz")
    assert "\n" not in str(info.value) and "'npz:x.npz'" in str(info.value)


def test_many_small_classes_are_summarised():
    raw = _raw(np.zeros((6, 1, 3)), np.arange(6), classes=[str(c) for c in range(6)])
    with pytest.raises(DatasetError, match="class '0' has 1, '1' has 1, '2' has 1 and 3 more;"):
        check_raw(raw, "d")


def test_the_smallest_accepted_dataset_prepares_every_class_in_every_split(tmp_path):
    """2 classes x MIN_PER_CLASS samples: the smallest dataset a search accepts (train 4, validation 2, test 2)."""
    np.savez(tmp_path / "tiny.npz", x=np.random.default_rng(0).random((8, 1, 5)).astype(np.float32), y=GOOD_Y)
    prepare_dataset(f"npz:{tmp_path / 'tiny.npz'}", tmp_path / "data")
    data = load_prepared(tmp_path / "data", f"npz:{tmp_path / 'tiny.npz'}")
    assert {s: len(data.y[s]) for s in SPLITS} == {"train": 4, "val": 2, "test": 2}
    assert all(set(data.y[s].tolist()) == {0, 1} for s in SPLITS)


@pytest.mark.parametrize(
    "arrays",
    [{"x": np.full((8, 1, 3), 1e39), "y": GOOD_Y},  # passes the loader (finite float64), overflows float32
     {"x": np.zeros((6, 1, 3), np.float32), "y": np.arange(6) % 2},
     {"x": np.zeros((8, 1, 3), np.float32), "y": np.zeros(8, int)}],
)  # fmt: skip
def test_preparing_an_unfit_dataset_writes_nothing(tmp_path, arrays):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError):
        prepare_dataset(f"npz:{tmp_path / 'bad.npz'}", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_an_image_folder_with_an_empty_class_is_found_without_reading_an_image(tmp_path):
    folder = write_image_folder(tmp_path / "pets")
    (folder / "cat" / "0.png").write_bytes(b"not a png: reading it would fail differently")
    (folder / "owl").mkdir()
    (folder / "owl" / "notes.txt").write_text("no images")
    with pytest.raises(DatasetError, match=r"imagefolder:.*pets' has too few samples \(12\): class 'owl' has 0"):
        inspect_source(f"imagefolder:{folder}")
    for i in range(3):
        (folder / "owl" / f"{i}.png").write_bytes((folder / "dog" / "0.png").read_bytes())
    with pytest.raises(DatasetError, match="class 'owl' has 3; a search needs at least 4"):
        inspect_source(f"imagefolder:{folder}")
