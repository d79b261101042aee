"""Prepared datasets kept in a folder and versioned by a hash of their bytes: the core's data store (no DVC needed).

:class:`nas_pipeline.dvc_versioning.DvcDataStore` does the same with DVC (``data.dvc``, a remote). Both are
picklable, so an evaluation request carries its store to any worker, which loads exactly the version it was given.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from nas_core.data.preparation import PreparedData, dataset_folder, load_prepared, prepare_dataset
from nas_core.search.ports import InfrastructureError
from nas_core.search.records import DatasetRef

DATA_SEED = 0  # the split never depends on the search seed: one dataset version per source


def folder_hash(folder: Path) -> str:
    """A hash of every file's name and bytes under ``folder``."""
    digest = hashlib.md5()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class LocalDataStore:
    """Splits under ``<root>/<dataset folder>/``; the version is :func:`folder_hash` of that folder."""

    root: Path

    def prepare(self, dataset: str, data_root: Path | None = None, download: bool = False) -> DatasetRef:
        path = prepare_dataset(dataset, Path(self.root), DATA_SEED, data_root, download)
        return DatasetRef(dataset, folder_hash(path), path)

    def load(self, dataset: str, version: str) -> PreparedData:
        folder = Path(self.root) / dataset_folder(dataset)
        found = folder_hash(folder) if folder.is_dir() else "missing"
        if found != version:
            raise InfrastructureError(f"{folder} holds data version {found}, the search uses {version}; prepare it again")
        return load_prepared(Path(self.root), dataset)
