"""Training hyperparameters a genome may carry, searched jointly with the architecture."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

OPTIMIZERS = ("adam", "adamw", "sgd")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: Any) -> bool:
    return _number(value) and value > 0


def _non_negative_number(value: Any) -> bool:
    return _number(value) and value >= 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# name -> (check, what a valid value is)
HPARAMS = {
    "lr": (_positive_number, "a number > 0"),
    "weight_decay": (_non_negative_number, "a number >= 0"),
    "batch_size": (_positive_int, "an integer >= 1"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {list(OPTIMIZERS)}"),
}


def check_hparams(values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first unknown or invalid hyperparameter."""
    for name, value in values.items():
        if name not in HPARAMS:
            raise ValueError(f"unknown hyperparameter '{name}' (known: {', '.join(HPARAMS)})")
        check, expected = HPARAMS[name]
        if not check(value):
            raise ValueError(f"hyperparameter {name}={value!r} must be {expected}")


def check_choices(choices: Mapping[str, Sequence[Any]]) -> None:
    """Validate a search space's hyperparameter choices: known names, non-empty lists of valid values."""
    for name, options in choices.items():
        if not isinstance(options, (list, tuple)) or not options:
            raise ValueError(f"hyperparameter '{name}' needs a non-empty list of choices")
        for value in options:
            check_hparams({name: value})
        if len({json.dumps(v) for v in options}) != len(options) or len(set(options)) != len(options):
            raise ValueError(f"hyperparameter '{name}' lists a choice twice: {list(options)}")


def sample(choices: Mapping[str, Sequence[Any]], rng: random.Random) -> dict[str, Any]:
    return {name: rng.choice(list(options)) for name, options in sorted(choices.items())}


def alternatives(choices: Mapping[str, Sequence[Any]], current: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every hyperparameter setting that differs from ``current`` in exactly one value."""
    return [
        {**current, name: value} for name, options in sorted(choices.items()) for value in options if value != current.get(name)
    ]
