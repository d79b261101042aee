"""The identity of an evaluation: one key for "this architecture, trained (or looked up) exactly this way, on this data".

Two candidate runs with the same :func:`evaluation_key` measured the same thing, so a search may reuse the earlier
result instead of training again. The key covers everything that changes the result and nothing that only says
how or where it ran (see ``docs/warm-start.md``):

- the architecture's identity in its space (isomorphism-aware; with searched hyperparameters, those too);
- the space's name (its sampling options, like ``max_nodes``, do not change a given genome's network);
- the fidelity: the epochs trained;
- the training settings in :data:`TRAINING_IDENTITY` as applied to this genome (its own hyperparameters override
  the search's), with the cosine schedule's horizon resolved;
- the early-stopping rule (median stopping can end a training early);
- the evaluator: ``train``, or the table's checksum and its select and report columns;
- the dataset version (the DVC hash).

Not in it: workers, runner, device, GPU packing, timeouts, output folder, experiment, strategy, budget, proxy
screening; they decide which candidates run and where, not what one candidate's evaluation measures.

:func:`context_key` is the same without the architecture and the fidelity: evaluations with equal context keys are
comparable results, which is what a warm start tells a strategy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nas_core.config import SearchConfig
from nas_core.evaluation.training import TrainConfig

TRAINING_IDENTITY = (
    "batch_size", "optimizer", "lr", "weight_decay", "momentum", "scheduler", "seed", "schedule_epochs", "precision",
    "augment",
)  # fmt: skip
"""The :class:`TrainConfig` fields that change a candidate's result (``epochs`` is the fidelity, keyed apart)."""

KEY_FORMAT = 1  # bump when what goes into a key changes: old keys then never match new ones


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def evaluator_identity(config: SearchConfig, table_version: str | None) -> dict[str, Any]:
    """``train``, or the table (by checksum) and the columns it is read by."""
    if config.table_path is None:
        return {"evaluator": "train"}
    return {"evaluator": "table", "table": table_version, "select": config.select_metric, "report": config.report_metric}


def training_identity(train: TrainConfig) -> dict[str, Any]:
    """The settings of ``train`` that change the result; the schedule's horizon resolved (None means ``epochs``)."""
    values = {name: getattr(train, name) for name in TRAINING_IDENTITY}
    values["schedule_epochs"] = train.schedule_epochs or train.epochs
    return values


def context_identity(config: SearchConfig, train: TrainConfig, dataset_version: str, table_version: str | None) -> dict:
    """Everything but the architecture and the fidelity (``train``: the search-wide settings, or one genome's)."""
    return {
        "format": KEY_FORMAT,
        "space": config.space,
        "dataset_version": dataset_version,
        "early_stop": config.early_stop,
        **evaluator_identity(config, table_version),
        **({} if config.table_path else {"training": training_identity(train)}),
    }


def context_key(config: SearchConfig, train: TrainConfig, dataset_version: str, table_version: str | None) -> str:
    """The key of a search's comparable results: its space, evaluator, data version and search-wide training."""
    return _digest(context_identity(config, train, dataset_version, table_version))


def evaluation_key(
    config: SearchConfig, train: TrainConfig, architecture: str, dataset_version: str, table_version: str | None
) -> str:
    """The key of one evaluation: ``architecture`` (the space's identity) trained with ``train`` (fidelity included)."""
    context = context_identity(config, train, dataset_version, table_version)
    return _digest({**context, "architecture": architecture, "fidelity": None if config.table_path else train.epochs})
