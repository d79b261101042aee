"""Train and evaluate one candidate: seeded, budgeted, resumable, with NaN, out-of-memory and time guards.

The step loop never waits for the device: the splits are moved there once, a batch is an index slice of
a seeded permutation, augmentation is part of the same index gather, and the loss is summed on the device.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from nas_core.builder import build_model
from nas_core.data.preparation import PreparedData
from nas_core.evaluation.batches import _gather, _on_device, _shift_flip_indices
from nas_core.evaluation.scoring import _amp_dtype, _autocast, score_split
from nas_core.evaluation.stopping import check_stop
from nas_core.genome import Genome
from nas_core.metrics import count_flops, count_params
from nas_core.seeding import build_seeded

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTS = ("none", "shift", "shift-flip")
TRAINABLE_SPLITS = ("train", "val")


@dataclass(frozen=True)
class TrainConfig:
    """How a candidate is trained.

    ``schedule_epochs`` is the cosine schedule's horizon (None: ``epochs``); training ``epochs`` of a longer
    schedule and continuing later from :attr:`TrainResult.state` gives exactly what training straight through
    gives. ``precision`` ``auto`` is bf16 autocast on CUDA (fp16 with loss scaling where bf16 is unsupported)
    and fp32 elsewhere; ``channels_last`` None is on for images on CUDA. ``augment`` (images only) shifts every
    image by up to one pixel each way, repeating its edge pixels; ``shift-flip`` also mirrors half of them.
    ``train_splits`` with ``val`` trains a final model on train+val: no per-epoch validation, val metrics NaN.
    ``stop_below`` is learning-curve early stopping: after epoch ``e`` training stops (successfully, with
    ``TrainResult.stopped_at = e``) when the best validation accuracy so far is below ``stop_below[e - 1]``
    (None: no rule at that epoch); the search fills it with the median of earlier candidates' curves.
    """

    epochs: int = 12
    batch_size: int = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 0.005
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: Literal["cosine", "none"] = "cosine"
    seed: int = 0
    time_limit_s: float | None = None
    device: str = "cpu"
    schedule_epochs: int | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None
    augment: Literal["none", "shift", "shift-flip"] = "none"
    train_splits: tuple[str, ...] = ("train",)
    stop_below: tuple[float | None, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_splits", tuple(self.train_splits))  # lists from YAML/JSON configs
        object.__setattr__(self, "stop_below", tuple(self.stop_below))
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ValueError(f"schedule_epochs ({self.schedule_epochs}) must be at least epochs ({self.epochs})")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{self.precision}' (known: {', '.join(PRECISIONS)})")
        if self.augment not in AUGMENTS:
            raise ValueError(f"unknown augment '{self.augment}' (known: {', '.join(AUGMENTS)})")
        splits = self.train_splits
        if not splits or len(set(splits)) != len(splits) or not set(splits) <= set(TRAINABLE_SPLITS):
            raise ValueError(f"train_splits must be distinct names from {TRAINABLE_SPLITS} (never test), got {splits}")

    @property
    def validates(self) -> bool:
        """Whether every epoch is validated (not when the validation split is trained on)."""
        return "val" not in self.train_splits


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_f1: float


@dataclass
class TrainState:
    """Everything :func:`fit` needs to continue exactly where it stopped, tensors on the CPU.

    ``generator`` is the state of the CPU generator behind the permutations; it also seeds each epoch's
    augmentation, so that needs no state of its own. ``scaler`` is the fp16 loss scaler's state.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    generator: torch.Tensor
    history: list[EpochMetrics] = field(default_factory=list)
    scaler: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, tensors and numbers: ``torch.save`` it, ``torch.load(weights_only=True)`` it back."""
        return {
            "epoch": self.epoch,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "generator": self.generator,
            "history": [dataclasses.asdict(m) for m in self.history],
            "scaler": self.scaler,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(
            epoch=int(values["epoch"]),
            model=dict(values["model"]),
            optimizer=values["optimizer"],
            scheduler=values["scheduler"],
            generator=values["generator"],
            history=[EpochMetrics(**m) for m in values["history"]],
            scaler=values.get("scaler"),
        )


@dataclass
class TrainResult:
    """What training a candidate produced; ``status`` is ``ok`` or ``failed`` (with ``reason``).

    ``state`` (when ok) continues the training with ``fit(..., start=state)``.
    """

    status: str
    reason: str = ""
    history: list[EpochMetrics] = field(default_factory=list)
    val_accuracy: float = float("nan")
    val_f1: float = float("nan")
    val_loss: float = float("nan")
    test_accuracy: float = float("nan")
    test_f1: float = float("nan")
    params: int = 0
    flops: int = 0
    train_seconds: float = 0.0
    started_at: float = 0.0  # unix time when the epoch loop started (train_seconds later it ended)
    stopped_at: int = 0  # the epoch at which learning-curve early stopping ended training (0: it did not)
    model: nn.Module | None = None
    state: TrainState | None = None

    def metrics(self) -> dict[str, float]:
        """Final metrics as a flat dict (NaNs dropped)."""
        values = {
            "val_accuracy": self.val_accuracy,
            "val_f1": self.val_f1,
            "val_loss": self.val_loss,
            "test_accuracy": self.test_accuracy,
            "test_f1": self.test_f1,
            "params": float(self.params),
            "flops": float(self.flops),
            "train_seconds": self.train_seconds,
            **({"stopped_at_epoch": float(self.stopped_at)} if self.stopped_at else {}),
        }
        return {k: v for k, v in values.items() if not math.isnan(v)}


class CandidateFailed(Exception):
    """Training of a candidate had to stop (diverged, out of memory, out of time)."""


def preload_training_imports() -> threading.Thread:
    """Import, in a background thread, what the first candidate's training imports on first use: ``torch._dynamo``,
    which PyTorch's optimizers load when the first one is made (1.5-2.5 s of CPU), so that the first candidates do
    not wait for it. Meant to run while the search waits on other processes (data versioning): the import then
    costs no wall time. Returns the (daemon) thread."""

    def load() -> None:
        import torch._dynamo  # noqa: F401 - imported for its side effect: the modules are cached for training

    thread = threading.Thread(target=load, name="preload-training-imports", daemon=True)
    thread.start()
    return thread


def _make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # CUDA: one fused kernel per step. CPU: foreach runs the very kernels of the per-parameter loop (identical
    # results) with less Python per step; fused CPU Adam would round differently.
    impl = {"fused": True} if device.type == "cuda" else {"foreach": True}
    params, decay = model.parameters(), config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=decay, **impl)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=decay, **impl)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=decay, **impl)


def _to_cpu(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU (contiguous), containers rebuilt as plain dicts and lists."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _check(config: TrainConfig, data: PreparedData, device: torch.device, start: TrainState | None) -> bool:
    """Raise ValueError for settings that cannot work on ``data``; return whether to use channels-last."""
    if config.augment != "none" and data.ndim != 2:
        raise ValueError(f"augment '{config.augment}' needs images (C, H, W); {data.name} has inputs of shape {data.input_shape}")
    if config.channels_last and data.ndim != 2:
        raise ValueError(f"channels_last needs images (C, H, W); {data.name} has inputs of shape {data.input_shape}")
    if start is not None and start.epoch >= config.epochs:
        raise ValueError(f"the start state has already trained {start.epoch} epochs; set epochs above that to continue")
    return config.channels_last if config.channels_last is not None else (device.type == "cuda" and data.ndim == 2)


def _restore(
    start: TrainState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
) -> None:
    """Load ``start`` into freshly made training objects (on any device)."""
    if (scheduler is None) != (start.scheduler is None):
        raise ValueError("the start state was trained with another scheduler setting; continue with the same one")
    if scheduler is not None and start.scheduler["T_max"] != scheduler.T_max:
        raise ValueError(
            f"the start state follows a {start.scheduler['T_max']}-step schedule, this config's has {scheduler.T_max} steps: "
            "continue with the same schedule_epochs, batch size and data"
        )
    model.load_state_dict(start.model)
    flags = ("foreach", "fused", "capturable")  # this device's optimizer implementation, not the saved one's
    own = optimizer.param_groups
    groups = [{**g, **{k: o[k] for k in flags if k in o}} for g, o in zip(start.optimizer["param_groups"], own, strict=False)]
    optimizer.load_state_dict({**start.optimizer, "param_groups": groups})
    for param, state in optimizer.state.items():  # moments in the parameter's layout (channels-last), as a fresh run has them
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    if scheduler is not None:
        scheduler.load_state_dict(start.scheduler)
    if start.scaler is not None and scaler.is_enabled():
        scaler.load_state_dict(start.scaler)
    generator.set_state(start.generator)


def _below_curve(history: list[EpochMetrics], thresholds: tuple[float | None, ...]) -> bool:
    """Whether the best validation accuracy so far is under the threshold for the last epoch."""
    epoch = history[-1].epoch
    threshold = thresholds[epoch - 1] if epoch <= len(thresholds) else None
    return threshold is not None and max(m.val_accuracy for m in history) < threshold


def fit(
    model: nn.Module,
    data: PreparedData,
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    start: TrainState | None = None,
    keep_state: bool = True,
) -> TrainResult:
    """Train ``model`` on ``config.train_splits``, validate every epoch (unless val is trained on), test once at the end.

    With ``start`` (a :attr:`TrainResult.state`) training continues from its epoch; ``on_epoch`` sees only the
    new epochs and the history continues. ``keep_state=False`` skips copying the optimizer state back into
    ``TrainResult.state`` (when nothing will continue the training). Selection must only ever look at
    validation metrics; the test figures are reported, never used.
    """
    device = torch.device(config.device)
    channels_last = _check(config, data, device, start)
    amp_dtype = _amp_dtype(config.precision, device)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    tensors = _on_device(data, device, torch.channels_last if channels_last else torch.contiguous_format)
    parts = [tensors[s] for s in config.train_splits]
    x_train, y_train = parts[0] if len(parts) == 1 else (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    n = len(x_train)
    steps_per_epoch = max(1, n // config.batch_size + (n % config.batch_size > 1))
    optimizer = _make_optimizer(model, config, device)
    schedule_steps = (config.schedule_epochs or config.epochs) * steps_per_epoch
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule_steps) if config.scheduler == "cosine" else None
    )
    # fused optimizers take the scale and skip-step flag as tensors: no host sync per step even in fp16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(status="ok", params=count_params(model), flops=count_flops(model, data.input_shape))
    if start is not None:
        _restore(start, model, optimizer, scheduler, scaler, generator)
        result.history = list(start.history)
    first_epoch = start.epoch + 1 if start is not None else 1
    nan = float("nan")
    started, result.started_at = time.monotonic(), time.time()
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            if config.augment != "none":
                seed = int(torch.randint(2**62, (), generator=generator))
                shifts = torch.Generator(device).manual_seed(seed)
                rows, cols = _shift_flip_indices(n, *x_train.shape[2:], config.augment == "shift-flip", shifts, device)
            total = torch.zeros((), device=device)
            for step in range(steps_per_epoch):
                batch = slice(step * config.batch_size, (step + 1) * config.batch_size)
                idx = order[batch]
                x = x_train[idx] if config.augment == "none" else _gather(x_train, idx, rows[batch], cols[batch])
                with _autocast(device, amp_dtype):
                    logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach()
                check_stop()  # Ctrl-C or SIGTERM: a thread cannot be interrupted, so it looks
                if config.time_limit_s is not None and time.monotonic() - started > config.time_limit_s:
                    raise CandidateFailed(f"timeout: exceeded the candidate time limit of {config.time_limit_s:g}s")
            train_loss = float(total) / steps_per_epoch
            if not math.isfinite(train_loss):
                raise CandidateFailed(f"diverged: training loss is {train_loss} at epoch {epoch}")
            val_loss, val_acc, val_f1 = nan, nan, nan
            if config.validates:
                val_loss, val_acc, val_f1 = score_split(model, *tensors["val"], data.num_classes, amp_dtype)
                if not math.isfinite(val_loss):
                    raise CandidateFailed(f"diverged: validation loss is {val_loss} at epoch {epoch}")
            metrics = EpochMetrics(epoch, train_loss, val_loss, val_acc, val_f1)
            result.history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
            if _below_curve(result.history, config.stop_below) and epoch < config.epochs:
                result.stopped_at = epoch
                break
    except CandidateFailed as exc:
        result.status, result.reason = "failed", str(exc)
    except torch.OutOfMemoryError as exc:
        result.status, result.reason = "failed", f"out of memory: {str(exc).splitlines()[0]}"
    result.train_seconds = time.monotonic() - started
    if result.status == "ok":
        last = result.history[-1]
        result.val_loss, result.val_accuracy, result.val_f1 = last.val_loss, last.val_accuracy, last.val_f1
        _, result.test_accuracy, result.test_f1 = score_split(model, *tensors["test"], data.num_classes, amp_dtype)
        result.model = model.to(memory_format=torch.contiguous_format).cpu().eval()
    if result.status == "ok" and keep_state:
        result.state = TrainState(
            epoch=result.history[-1].epoch,
            model=_to_cpu(model.state_dict()),
            optimizer=_to_cpu(optimizer.state_dict()),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            generator=generator.get_state(),
            history=list(result.history),
            scaler=scaler.state_dict() if scaler.is_enabled() else None,
        )
    return result


def train_genome(
    genome: Genome,
    data: PreparedData,
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    build: Callable[..., nn.Module] = build_model,
    start: TrainState | None = None,
    keep_state: bool = True,
) -> TrainResult:
    """Build ``genome`` (``build(genome, shape, classes, mean, std)``) seeded by ``config.seed``, then :func:`fit` it.

    With ``start`` the built weights are replaced by the state's, and training continues from there.
    """
    model = build_seeded(build, config.seed, genome, data.input_shape, data.num_classes, data.mean, data.std)
    return fit(model, data, config, on_epoch, start, keep_state)
