"""Training a candidate on the real digits data: learning, history, callbacks, seeding and failure guards."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from nas_core.builder import build_model
from nas_core.genome import Genome
from nas_core.metrics import accuracy, count_flops, count_params, macro_f1
from nas_core.training import EpochMetrics, TrainConfig, train_genome

EPOCHS = 6


def good_genome() -> Genome:
    """input -> conv 3x3/32/s1 -> conv 3x3/32/s2 -> output: learns digits well within a few epochs."""
    return Genome.from_dict(
        {
            "nodes": [
                {"id": "input", "op": "input"},
                {"id": "c1", "op": "conv", "settings": {"kernel": 3, "channels": 32, "stride": 1}},
                {"id": "c2", "op": "conv", "settings": {"kernel": 3, "channels": 32, "stride": 2}},
                {"id": "output", "op": "output"},
            ],
            "edges": [["input", "c1"], ["c1", "c2"], ["c2", "output"]],
        }
    ).validate()


@pytest.fixture(scope="module")
def trained(digits):
    """One full training run (seed 0), with every on_epoch call recorded."""
    calls: list[EpochMetrics] = []
    result = train_genome(good_genome(), digits, TrainConfig(epochs=EPOCHS, seed=0), on_epoch=calls.append)
    return result, calls


@pytest.fixture(scope="module")
def short_runs(digits):
    """Two-epoch runs: seed 0 twice and seed 1 once."""
    config = TrainConfig(epochs=2, seed=0)
    return (
        train_genome(good_genome(), digits, config),
        train_genome(good_genome(), digits, config),
        train_genome(good_genome(), digits, dataclasses.replace(config, seed=1)),
    )


def _with_nan_inputs(data, split: str):
    x = data.x[split].copy()
    x[: len(x) // 2] = np.nan
    return dataclasses.replace(data, x={**data.x, split: x})


# ---- a good genome learns -----------------------------------------------------------------


def test_good_genome_reaches_high_validation_accuracy(trained):
    result, _ = trained
    assert result.status == "ok"
    assert result.reason == ""
    assert result.val_accuracy > 0.9
    assert result.val_f1 > 0.85
    assert result.train_seconds > 0


def test_history_has_one_finite_entry_per_epoch(trained):
    result, _ = trained
    assert len(result.history) == EPOCHS
    assert [m.epoch for m in result.history] == list(range(1, EPOCHS + 1))
    for m in result.history:
        assert isinstance(m, EpochMetrics)
        for value in (m.train_loss, m.val_loss, m.val_accuracy, m.val_f1):
            assert math.isfinite(value)
        assert 0.0 <= m.val_accuracy <= 1.0
        assert 0.0 <= m.val_f1 <= 1.0
    assert result.history[-1].train_loss < result.history[0].train_loss
    last = result.history[-1]
    assert (result.val_loss, result.val_accuracy, result.val_f1) == (last.val_loss, last.val_accuracy, last.val_f1)


def test_on_epoch_is_called_once_per_epoch_in_order(trained):
    result, calls = trained
    assert calls == result.history
    assert [m.epoch for m in calls] == list(range(1, EPOCHS + 1))


def test_test_metrics_params_and_flops_are_reported(trained, digits):
    result, _ = trained
    assert 0.85 < result.test_accuracy <= 1.0
    assert 0.0 < result.test_f1 <= 1.0
    assert result.model is not None
    assert not result.model.training
    assert result.params == sum(p.numel() for p in result.model.parameters())
    fresh = build_model(good_genome(), digits.input_shape, digits.num_classes, digits.mean, digits.std)
    assert result.params == sum(p.numel() for p in fresh.parameters())
    assert result.flops > 0
    assert result.flops == count_flops(fresh, digits.input_shape)
    metrics = result.metrics()
    assert {"val_accuracy", "val_f1", "val_loss", "test_accuracy", "test_f1", "params", "flops", "train_seconds"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_test_metrics_come_from_the_test_split(trained, digits):
    result, _ = trained
    with torch.no_grad():
        predictions = result.model(torch.from_numpy(digits.x["test"])).argmax(dim=1).numpy()
    assert result.test_accuracy == pytest.approx(accuracy(predictions, digits.y["test"]))
    assert result.test_f1 == pytest.approx(macro_f1(predictions, digits.y["test"], digits.num_classes))


# ---- seeding --------------------------------------------------------------------------------


def test_same_seed_gives_identical_metrics_and_history(short_runs):
    first, second, _ = short_runs
    assert first.status == second.status == "ok"
    assert first.history == second.history
    assert (first.val_loss, first.val_accuracy, first.val_f1) == (second.val_loss, second.val_accuracy, second.val_f1)
    assert (first.test_accuracy, first.test_f1) == (second.test_accuracy, second.test_f1)


def test_different_seed_gives_different_train_losses(short_runs):
    first, _, other = short_runs
    assert other.status == "ok"
    assert [m.train_loss for m in first.history] != [m.train_loss for m in other.history]


# ---- failure guards -------------------------------------------------------------------------


def test_exploding_learning_rate_fails_as_diverged(digits):
    config = TrainConfig(epochs=2, optimizer="sgd", lr=1e6, scheduler="none", seed=0)
    result = train_genome(good_genome(), digits, config)
    assert result.status == "failed"
    assert result.reason.startswith("diverged")
    assert result.model is None
    assert math.isnan(result.test_accuracy)
    assert "test_accuracy" not in result.metrics()


@pytest.mark.parametrize("split", ["train", "val"])
def test_nan_inputs_fail_as_diverged(digits, split):
    result = train_genome(good_genome(), _with_nan_inputs(digits, split), TrainConfig(epochs=1, seed=0))
    assert result.status == "failed"
    assert result.reason.startswith("diverged")
    assert result.history == []
    assert result.model is None


def test_tiny_time_limit_fails_as_timeout(digits):
    calls = []
    result = train_genome(good_genome(), digits, TrainConfig(epochs=3, seed=0, time_limit_s=1e-6), on_epoch=calls.append)
    assert result.status == "failed"
    assert result.reason.startswith("timeout")
    assert result.history == []
    assert calls == []
    assert result.model is None


# ---- metrics on hand-made arrays ------------------------------------------------------------


def test_accuracy_on_hand_made_arrays():
    assert accuracy(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])) == pytest.approx(3 / 4)
    assert accuracy(np.array([1, 1]), np.array([0, 0])) == 0.0
    assert accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0.0


def test_macro_f1_on_hand_made_arrays():
    predictions = np.array([0, 0, 1, 2])
    labels = np.array([0, 1, 1, 2])
    # class 0: P=1/2, R=1 -> F1=2/3; class 1: P=1, R=1/2 -> F1=2/3; class 2: F1=1
    per_class = [2 / 3, 2 / 3, 1.0]
    assert macro_f1(predictions, labels, 3) == pytest.approx(sum(per_class) / 3)
    # a fourth class that is neither present nor predicted scores 0 and still counts in the mean
    assert macro_f1(predictions, labels, 4) == pytest.approx(sum(per_class) / 4)
    # class 3 predicted but never present: P=0 -> F1=0; class 0: P=1, R=1/2 -> F1=2/3
    assert macro_f1(np.array([0, 3]), np.array([0, 0]), 4) == pytest.approx((2 / 3) / 4)
    assert macro_f1(labels, labels, 3) == pytest.approx(1.0)


def test_count_params_and_flops_of_a_linear_layer():
    layer = nn.Linear(4, 3)
    assert count_params(layer) == 4 * 3 + 3
    assert count_flops(layer, (4,)) == 2 * 4 * 3
