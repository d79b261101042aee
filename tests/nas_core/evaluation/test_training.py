"""Training a candidate on the real digits data: learning, history, callbacks, seeding and failure guards."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from nas_core.builder import build_model
from nas_core.evaluation.batches import _gather, _shift_flip_indices
from nas_core.evaluation.training import EpochMetrics, TrainConfig, TrainState, fit, train_genome
from nas_core.genome import Genome
from nas_core.metrics import accuracy, count_flops, count_params, macro_f1

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


@pytest.mark.slow
def test_good_genome_reaches_high_validation_accuracy(trained):
    result, _ = trained
    assert result.status == "ok"
    assert result.reason == ""
    assert result.val_accuracy > 0.9
    assert result.val_f1 > 0.85
    assert result.train_seconds > 0


@pytest.mark.slow
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


@pytest.mark.slow
def test_on_epoch_is_called_once_per_epoch_in_order(trained):
    result, calls = trained
    assert calls == result.history
    assert [m.epoch for m in calls] == list(range(1, EPOCHS + 1))


@pytest.mark.slow
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


@pytest.mark.slow
def test_test_metrics_come_from_the_test_split(trained, digits):
    result, _ = trained
    with torch.no_grad():
        predictions = result.model(torch.from_numpy(digits.x["test"])).argmax(dim=1).numpy()
    assert result.test_accuracy == pytest.approx(accuracy(predictions, digits.y["test"]))
    assert result.test_f1 == pytest.approx(macro_f1(predictions, digits.y["test"], digits.num_classes))


# ---- seeding --------------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_and_history(short_runs):
    first, second, _ = short_runs
    assert first.status == second.status == "ok"
    assert first.history == second.history
    assert (first.val_loss, first.val_accuracy, first.val_f1) == (second.val_loss, second.val_accuracy, second.val_f1)
    assert (first.test_accuracy, first.test_f1) == (second.test_accuracy, second.test_f1)


@pytest.mark.slow
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
@pytest.mark.slow
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


# ---- resumable state ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(digits):
    """A third of every digits split: many short runs stay fast."""
    return dataclasses.replace(
        digits, x={s: v[: len(v) // 3] for s, v in digits.x.items()}, y={s: v[: len(v) // 3] for s, v in digits.y.items()}
    )


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _saved_and_loaded(state: TrainState, tmp_path) -> TrainState:
    torch.save(state.to_dict(), tmp_path / "state.pt")
    return TrainState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))


@pytest.mark.parametrize("augment", ["none", "shift-flip"])
@pytest.mark.slow
def test_continuing_a_saved_state_equals_training_straight_through(small, tmp_path, augment):
    config = TrainConfig(epochs=4, seed=3, augment=augment)
    straight = train_genome(good_genome(), small, config)
    first = train_genome(good_genome(), small, dataclasses.replace(config, epochs=2, schedule_epochs=4))
    assert first.status == "ok" and first.state is not None and first.state.epoch == 2
    assert first.history == straight.history[:2]
    calls: list[EpochMetrics] = []
    start = _saved_and_loaded(first.state, tmp_path)
    resumed = train_genome(good_genome(), small, config, on_epoch=calls.append, start=start)
    assert resumed.status == "ok"
    assert [m.epoch for m in calls] == [3, 4]
    assert resumed.history == straight.history
    assert _same_weights(resumed.model, straight.model)
    assert (resumed.test_accuracy, resumed.test_f1) == (straight.test_accuracy, straight.test_f1)
    assert resumed.state.epoch == 4 and resumed.state.history == straight.history


def test_state_round_trips_through_torch_save_with_weights_only(small, tmp_path):
    result = train_genome(good_genome(), small, TrainConfig(epochs=1, seed=0))
    state = result.state
    loaded = _saved_and_loaded(state, tmp_path)
    assert (loaded.epoch, loaded.history, loaded.scheduler, loaded.scaler) == (1, result.history, state.scheduler, None)
    assert torch.equal(loaded.generator, state.generator)
    assert loaded.model.keys() == result.model.state_dict().keys()
    assert all(torch.equal(loaded.model[k], v) for k, v in result.model.state_dict().items())
    assert loaded.optimizer["param_groups"] == state.optimizer["param_groups"]
    assert all(v.device.type == "cpu" for v in loaded.model.values())


def test_continuing_needs_epochs_left_and_the_same_schedule(small):
    done = train_genome(good_genome(), small, TrainConfig(epochs=1, seed=0)).state
    with pytest.raises(ValueError, match="already trained 1 epochs"):
        train_genome(good_genome(), small, TrainConfig(epochs=1, seed=0), start=done)
    with pytest.raises(ValueError, match="schedule"):
        train_genome(good_genome(), small, TrainConfig(epochs=2, seed=0), start=done)


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="schedule_epochs"):
        TrainConfig(epochs=4, schedule_epochs=2)
    with pytest.raises(ValueError, match="never test"):
        TrainConfig(train_splits=("train", "test"))
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    assert TrainConfig(train_splits=["train", "val"]).train_splits == ("train", "val")


# ---- final training on train+val ------------------------------------------------------------


def test_training_on_train_and_val_skips_validation_and_still_tests(small):
    calls: list[EpochMetrics] = []
    result = train_genome(
        good_genome(), small, TrainConfig(epochs=2, seed=0, train_splits=("train", "val")), on_epoch=calls.append
    )
    train_only = train_genome(good_genome(), small, TrainConfig(epochs=2, seed=0))
    assert result.status == "ok" and calls == result.history
    for m in result.history:
        assert math.isfinite(m.train_loss)
        assert math.isnan(m.val_loss) and math.isnan(m.val_accuracy) and math.isnan(m.val_f1)
    assert math.isnan(result.val_accuracy) and "val_accuracy" not in result.metrics()
    assert 0.3 < result.test_accuracy <= 1.0  # chance is 0.1
    assert result.state.scheduler["last_epoch"] > train_only.state.scheduler["last_epoch"]


# ---- augmentation, precision, memory layout -------------------------------------------------


def test_shift_flip_gathers_each_image_shifted_by_at_most_a_pixel():
    x = torch.randn(40, 3, 5, 6)
    rows, cols = _shift_flip_indices(40, 5, 6, True, torch.Generator().manual_seed(0), torch.device("cpu"))
    idx = torch.arange(40)
    out = _gather(x, idx, rows, cols)
    assert out.shape == x.shape
    assert torch.equal(_gather(x.contiguous(memory_format=torch.channels_last), idx, rows, cols), out)
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    flips = 0
    for image, source in zip(out, padded, strict=True):
        candidates = [source[:, dy : dy + 5, dx : dx + 6] for dy in range(3) for dx in range(3)]
        same = any(torch.equal(image, c) for c in candidates)
        mirrored = any(torch.equal(image, c.flip(-1)) for c in candidates)
        assert same or mirrored
        flips += mirrored and not same
    assert 5 < flips < 35


def test_augmentation_is_seeded_and_changes_training(small):
    config = TrainConfig(epochs=1, seed=0, augment="shift")
    first, second = train_genome(good_genome(), small, config), train_genome(good_genome(), small, config)
    plain = train_genome(good_genome(), small, dataclasses.replace(config, augment="none"))
    assert first.status == "ok" and first.history == second.history
    assert first.history[0].train_loss != plain.history[0].train_loss


def test_augmentation_and_channels_last_need_images(small):
    sequences = dataclasses.replace(small, x={s: v.reshape(len(v), 1, 64) for s, v in small.x.items()}, input_shape=(1, 64))
    for config in (TrainConfig(augment="shift"), TrainConfig(channels_last=True)):
        with pytest.raises(ValueError, match=r"needs images \(C, H, W\)"):
            fit(nn.Linear(64, 10), sequences, config)


def test_auto_precision_on_cpu_is_fp32(small):
    auto = train_genome(good_genome(), small, TrainConfig(epochs=1, seed=0))
    fp32 = train_genome(good_genome(), small, TrainConfig(epochs=1, seed=0, precision="fp32"))
    assert auto.history == fp32.history
    assert _same_weights(auto.model, fp32.model)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.slow
def test_half_precision_autocast_trains_on_cpu(small, precision):
    result = train_genome(good_genome(), small, TrainConfig(epochs=2, seed=0, precision=precision))
    fp32 = train_genome(good_genome(), small, TrainConfig(epochs=2, seed=0, precision="fp32"))
    assert result.status == "ok"
    assert result.history[0].train_loss != fp32.history[0].train_loss
    assert abs(result.history[-1].train_loss - fp32.history[-1].train_loss) < 0.2
    assert (result.state.scaler is not None) == (precision == "fp16")


def test_channels_last_on_cpu_trains_like_the_default(small):
    default = train_genome(good_genome(), small, TrainConfig(epochs=3, seed=0))
    channels_last = train_genome(good_genome(), small, TrainConfig(epochs=3, seed=0, channels_last=True))
    assert channels_last.status == "ok"
    assert channels_last.model.stem[0].weight.is_contiguous()  # handed back in the default layout
    assert abs(channels_last.history[-1].train_loss - default.history[-1].train_loss) < 0.05
    assert abs(channels_last.val_accuracy - default.val_accuracy) <= 0.05


# ---- CUDA (skipped without a GPU) -----------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize(("precision", "augment"), [("auto", "none"), ("fp16", "shift-flip")])
def test_cuda_steps_never_wait_for_the_device(digits, precision, augment):
    """CUDA reports every host sync in sync-debug mode: their number must not grow with the steps per epoch."""
    syncs = []
    for n in (256, 256, 768):  # the first run also counts CUDA's one-time library set-up
        data = dataclasses.replace(
            digits, x={**digits.x, "train": digits.x["train"][:n]}, y={**digits.y, "train": digits.y["train"][:n]}
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = train_genome(
                    good_genome(), data, TrainConfig(epochs=2, device="cuda", precision=precision, augment=augment)
                )
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert result.status == "ok"
        syncs.append(sum("synchroniz" in str(w.message).lower() for w in caught))
    assert 0 < syncs[1] == syncs[2]


@needs_cuda
def test_cuda_state_continues_on_cuda_and_on_cpu(small):
    config = TrainConfig(epochs=3, seed=0, device="cuda", augment="shift")
    first = train_genome(good_genome(), small, dataclasses.replace(config, epochs=1, schedule_epochs=3))
    straight = train_genome(good_genome(), small, config)
    resumed = train_genome(good_genome(), small, config, start=first.state)
    assert resumed.status == "ok" and [m.epoch for m in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == first.history[0]
    assert abs(resumed.history[-1].train_loss - straight.history[-1].train_loss) < 0.05  # cuDNN is not bitwise reproducible
    assert resumed.model.stem[0].weight.device.type == "cpu" and resumed.model.stem[0].weight.is_contiguous()
    on_cpu = train_genome(good_genome(), small, dataclasses.replace(config, device="cpu"), start=first.state)
    assert on_cpu.status == "ok" and on_cpu.history[-1].train_loss < first.history[0].train_loss


@pytest.mark.slow
def test_learning_curve_early_stopping_ends_a_candidate_below_the_curve(digits):
    config = TrainConfig(epochs=4, seed=0, stop_below=(None, 1.0, None, None))  # epoch 2's bar is out of reach
    stopped = train_genome(good_genome(), digits, config)
    assert stopped.status == "ok" and stopped.stopped_at == 2 and len(stopped.history) == 2
    assert stopped.metrics()["stopped_at_epoch"] == 2.0 and stopped.state.epoch == 2
    straight = train_genome(good_genome(), digits, TrainConfig(epochs=2, seed=0, schedule_epochs=4))
    assert stopped.history == straight.history, "the epochs before the stop are trained as usual"
    passing = train_genome(good_genome(), digits, TrainConfig(epochs=2, seed=0, stop_below=(0.0, 0.0)))
    assert passing.stopped_at == 0 and len(passing.history) == 2 and "stopped_at_epoch" not in passing.metrics()


@pytest.mark.slow
def test_a_training_nobody_will_continue_keeps_no_state(digits):
    kept = train_genome(good_genome(), digits, TrainConfig(epochs=1, seed=0))
    skipped = train_genome(good_genome(), digits, TrainConfig(epochs=1, seed=0), keep_state=False)
    assert kept.state is not None and skipped.state is None
    assert skipped.history == kept.history and skipped.test_accuracy == kept.test_accuracy


@pytest.mark.slow  # a fresh interpreter
def test_preloading_imports_what_the_first_training_would(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    probe = (
        "import json, sys, torch\nfrom nas_core.evaluation.training import preload_training_imports\n"
        "before = 'torch._dynamo' in sys.modules\npreload_training_imports().join()\nloaded = set(sys.modules)\n"
        "torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), foreach=True)\n"
        "print(json.dumps([before, 'torch._dynamo' in loaded, sorted(set(sys.modules) - loaded)]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    # not loaded before; loaded by the preload; the first optimizer then imports nothing more
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, True, []], done.stderr
