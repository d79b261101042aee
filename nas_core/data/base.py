"""What a dataset source is and the registry of sources; the loaders live in :mod:`nas_core.data.sources`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nas_core.registry import Registry


class DatasetError(ValueError):
    """A dataset name is unknown or its prepared files are missing or broken."""


@dataclass(frozen=True)
class RawDataset:
    """Inputs (N, C, H, W) or (N, C, L) with the value that maps to 1.0, and integer labels.

    Integer inputs are divided by ``scale``; float inputs come with ``scale`` 1.0 and are kept as they are.
    ``resize`` says how images were resized (None when nothing was), for the model card.
    """

    images: np.ndarray
    labels: np.ndarray
    scale: float
    classes: list[str]
    source: str
    resize: dict[str, Any] | None = None


@dataclass(frozen=True)
class SourceRequest:
    """Where a source reads from: its own path (``npz:PATH``), torchvision's root, and whether to download."""

    path: Path | None = None
    data_root: Path | None = None
    download: bool = False


@dataclass(frozen=True)
class Source:
    """A dataset source: ``load`` reads it; ``check`` (cheap, reads no data) raises DatasetError when it is
    not there and returns its spatial dimensions (2 images, 1 sequences). A ``shipped`` source's data ships inside
    a library (``digits``): it is always there and fit, so nothing reads it before a search just to check it."""

    load: Callable[[SourceRequest], RawDataset]
    check: Callable[[SourceRequest], int]
    takes_path: bool = False
    shipped: bool = False

    def __call__(self, request: SourceRequest) -> RawDataset:
        """Same as ``load``: a source is the registry's factory of raw datasets."""
        return self.load(request)


# name -> Source; the name is what configs and flags use (``name:PATH`` for sources that take a path)
SOURCES: Registry[Source] = Registry("dataset source")


def _images(request: SourceRequest) -> int:
    return 2  # the default check: the source is always there and holds images


def register_source(
    name: str, check: Callable[[SourceRequest], int] | None = None, takes_path: bool = False, shipped: bool = False
):
    """Register a loader ``(SourceRequest) -> RawDataset`` under ``name`` (``name:PATH`` when ``takes_path``)."""

    def decorate(loader: Callable[[SourceRequest], RawDataset]):
        SOURCES.add(name, Source(loader, check or _images, takes_path, shipped))
        return loader

    return decorate


def create_source(name: str, request: SourceRequest | None = None) -> RawDataset:
    """Read the source registered as ``name`` (a bare source name: ``npz``, not ``npz:PATH``)."""
    return SOURCES.create(name, request or SourceRequest())


def list_sources() -> list[str]:
    """The registered source names, in registration order."""
    return SOURCES.names()
