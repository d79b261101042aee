"""Train and evaluate one candidate: seeded, budgeted, with NaN, out-of-memory and time guards."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from nas_core.builder import build_model
from nas_core.data import PreparedData
from nas_core.genome import Genome
from nas_core.metrics import accuracy, count_flops, count_params, macro_f1

_INIT_LOCK = threading.Lock()  # torch's global RNG seeds weight init; parallel candidates take turns


@dataclass(frozen=True)
class TrainConfig:
    """How a candidate is trained."""

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


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_f1: float


@dataclass
class TrainResult:
    """What training a candidate produced; ``status`` is ``ok`` or ``failed`` (with ``reason``)."""

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
    model: nn.Module | None = None

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
        }
        return {k: v for k, v in values.items() if not math.isnan(v)}


class CandidateFailed(Exception):
    """Training of a candidate had to stop (diverged, out of memory, out of time)."""


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float, float]:
    """Loss, accuracy and macro-F1 of ``model`` on a split (in eval mode)."""
    model.eval()
    logits = torch.cat([model(x[i : i + 512]) for i in range(0, len(x), 512)])
    loss = float(nn.functional.cross_entropy(logits, y))
    predictions = logits.argmax(dim=1).cpu().numpy()
    labels = y.cpu().numpy()
    return loss, accuracy(predictions, labels), macro_f1(predictions, labels, num_classes)


def fit(
    model: nn.Module,
    data: PreparedData,
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train ``model`` on the train split, validate every epoch, test once at the end.

    Selection must only ever look at validation metrics; the test figures are reported, never used.
    """
    device = torch.device(config.device)
    model.to(device)
    tensors = {s: (torch.from_numpy(data.x[s]).to(device), torch.from_numpy(data.y[s]).to(device)) for s in data.x}
    x_train, y_train = tensors["train"]
    n = len(x_train)
    steps_per_epoch = max(1, n // config.batch_size + (n % config.batch_size > 1))
    optimizer = _make_optimizer(model, config)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
        if config.scheduler == "cosine"
        else None
    )
    generator = torch.Generator().manual_seed(config.seed)
    result = TrainResult(status="ok", params=count_params(model), flops=count_flops(model, data.input_shape))
    started = time.monotonic()
    try:
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            total = torch.zeros((), device=device)
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach()
                if config.time_limit_s is not None and time.monotonic() - started > config.time_limit_s:
                    raise CandidateFailed(f"timeout: exceeded the candidate time limit of {config.time_limit_s:g}s")
            train_loss = float(total) / steps_per_epoch
            if not math.isfinite(train_loss):
                raise CandidateFailed(f"diverged: training loss is {train_loss} at epoch {epoch}")
            val_loss, val_acc, val_f1 = evaluate(model, *tensors["val"], data.num_classes)
            if not math.isfinite(val_loss):
                raise CandidateFailed(f"diverged: validation loss is {val_loss} at epoch {epoch}")
            metrics = EpochMetrics(epoch, train_loss, val_loss, val_acc, val_f1)
            result.history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
    except CandidateFailed as exc:
        result.status, result.reason = "failed", str(exc)
    except torch.OutOfMemoryError as exc:
        result.status, result.reason = "failed", f"out of memory: {str(exc).splitlines()[0]}"
    result.train_seconds = time.monotonic() - started
    if result.status == "ok":
        last = result.history[-1]
        result.val_loss, result.val_accuracy, result.val_f1 = last.val_loss, last.val_accuracy, last.val_f1
        _, result.test_accuracy, result.test_f1 = evaluate(model, *tensors["test"], data.num_classes)
        result.model = model.cpu().eval()
    return result


def train_genome(
    genome: Genome,
    data: PreparedData,
    config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    build: Callable[..., nn.Module] = build_model,
) -> TrainResult:
    """Build ``genome`` (``build(genome, shape, classes, mean, std)``) seeded by ``config.seed``, then :func:`fit` it."""
    with _INIT_LOCK:
        torch.manual_seed(config.seed)
        model = build(genome, data.input_shape, data.num_classes, data.mean, data.std)
    return fit(model, data, config, on_epoch)
