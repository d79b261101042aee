"""The GPU packing benchmark's data is a dataset the search accepts, and without a GPU it says so instead of measuring."""

import torch

from benchmarks.gpu_packing import main, write_images
from nas_core.data.preparation import read_source


def test_its_images_are_a_valid_three_channel_dataset(tmp_path):
    path = write_images(tmp_path / "images.npz", samples=200)
    raw = read_source(f"npz:{path}")
    assert tuple(raw.images.shape[1:]) == (3, 32, 32) and len(set(raw.labels.tolist())) == 10


def test_without_a_gpu_it_measures_nothing(capsys):
    if torch.cuda.is_available():
        return  # on a GPU machine the benchmark runs for real (minutes): not a unit test
    assert main([]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
