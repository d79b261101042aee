"""Model and prediction metrics: accuracy, macro-F1, parameter count, FLOPs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over all classes (a class never predicted nor present scores 0)."""
    from sklearn.metrics import f1_score  # here: importing it takes a second, which a search spends while it waits

    return float(f1_score(labels, predictions, labels=list(range(num_classes)), average="macro", zero_division=0))


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a single input, counted by ``torch.utils.flop_counter``."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
