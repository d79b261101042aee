"""Turning a config into a search's fixed parts: its id, absolute paths, the space that fits the data."""

from __future__ import annotations

import dataclasses
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nas_core.config import SearchConfig
from nas_core.data.preparation import DatasetError, inspect_source, parse_dataset
from nas_core.spaces import SPACES

SPACE_FOR_DIMS = {2: "image", 1: "sequence"}  # the space a search uses when none is set: by the data's spatial dims
_INPUTS = {2: "images (C x H x W)", 1: "sequences (C x L)"}


def new_search_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def space_dims(space: str) -> int:
    """Spatial dimensions of the inputs a registered space builds networks for (2 unless it says otherwise)."""
    return int(getattr(SPACES[space], "input_ndim", 2))


def fit_space_to_data(config: SearchConfig) -> SearchConfig:
    """Check that the dataset's source is there (without reading it) and pick or check the space for it.

    Without an explicit ``space`` the search follows the data: ``image`` for images, ``sequence`` for
    N x C x L arrays. An explicit space built for the other kind of input is a DatasetError.
    """
    if config.table_path is not None:
        return config
    dims = inspect_source(config.dataset, config.data_root, config.download)
    if dims == space_dims(config.space):
        return config
    if "space" not in config.model_fields_set:
        return config.model_copy(update={"space": SPACE_FOR_DIMS[dims]})
    fitting = " or ".join(name for name in SPACES if space_dims(name) == dims)
    raise DatasetError(
        f"dataset '{config.dataset}' holds {_INPUTS[dims]} but space '{config.space}' builds networks for "
        f"{_INPUTS[space_dims(config.space)]}; use --space {fitting} (or leave --space out)"
    )


def resolve_config(config: SearchConfig, search_id: str) -> SearchConfig:
    """The config with absolute paths (``search.json`` must work from any folder) and the space fitted to the data."""
    output = Path(config.output or Path("outputs") / search_id).resolve()
    absolute: dict[str, Any] = {"output": output, "project_dir": Path(config.project_dir).resolve()}
    if config.init_genome is not None:
        absolute["init_genome"] = Path(config.init_genome).resolve()
    kind, source_path = parse_dataset(config.dataset)
    if source_path is not None:  # abspath, not resolve: the file name names the prepared folder
        absolute["dataset"] = f"{kind}:{os.path.abspath(source_path)}"
    if config.data_root is not None:
        absolute["data_root"] = Path(config.data_root).resolve()
    return fit_space_to_data(config.model_copy(update=absolute))


def space_options(config: SearchConfig) -> dict[str, Any]:
    """The config settings that the chosen space takes (e.g. min_nodes/max_nodes for ``image``)."""
    accepted = {f.name for f in dataclasses.fields(SPACES[config.space])}
    return {k: v for k, v in {"min_nodes": config.min_nodes, "max_nodes": config.max_nodes}.items() if k in accepted}


def threads_per_candidate(workers: int) -> int:
    """Each parallel candidate's share of the cores (no oversubscription)."""
    return max(1, (os.cpu_count() or 1) // workers)
