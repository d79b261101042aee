"""One provenance value: where a model or a run comes from, written the same way everywhere.

Built once when the search has prepared its data, extended with the model's identity and run ids when there is a
model, and written by :meth:`Provenance.tags` to the MLflow runs, the ONNX metadata, the registry's version tags
and the model card, under one spelling of each key.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

TAG_PREFIX = "nas."


@lru_cache(maxsize=1)
def code_version() -> tuple[str | None, bool | None, str | None]:
    """The git commit of this package's checkout, whether tracked files differ from it, and the package version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("nas-pipeline")
    except PackageNotFoundError:
        package = None
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        if Path(git("rev-parse", "--show-toplevel").strip()).resolve() != repo:  # a repository around site-packages
            raise subprocess.SubprocessError
        commit, dirty = git("rev-parse", "HEAD").strip(), bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):  # not a checkout, or no git
        commit, dirty = None, None
    return commit, dirty, package


@dataclass(frozen=True)
class Provenance:
    """Search, data, code and runs behind a search (and, with :meth:`for_model`, behind one model)."""

    search_id: str
    dataset: str
    dataset_version: str
    code_commit: str | None = None
    code_dirty: bool | None = None
    package_version: str | None = None
    search_run_id: str | None = None
    hash: str | None = None  # the model's architecture identity
    candidate_run_id: str | None = None  # the run that evaluated it
    final_run_id: str | None = None  # the run that retrained it with the final budget

    @classmethod
    def of_search(cls, search_id: str, dataset: str, dataset_version: str, search_run_id: str | None = None) -> Provenance:
        commit, dirty, package = code_version()
        return cls(search_id, dataset, dataset_version, commit, dirty, package, search_run_id)

    def with_search_run(self, run_id: str) -> Provenance:
        return dataclasses.replace(self, search_run_id=run_id)

    def for_model(self, hash_: str, candidate_run_id: str, final_run_id: str | None = None) -> Provenance:
        return dataclasses.replace(self, hash=hash_, candidate_run_id=candidate_run_id, final_run_id=final_run_id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    def tags(self, prefix: str = TAG_PREFIX) -> dict[str, str]:
        """Every known field as ``prefix + name`` -> text (booleans as ``true``/``false``); unknown ones are left out."""
        return {
            f"{prefix}{k}": (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in self.to_dict().items()
            if v is not None
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str], prefix: str = TAG_PREFIX) -> Provenance:
        """Read back what :meth:`tags` wrote (from ONNX metadata or a registry version)."""
        values: dict[str, Any] = {f.name: tags.get(prefix + f.name) for f in dataclasses.fields(cls)}
        if values["code_dirty"] is not None:
            values["code_dirty"] = values["code_dirty"] == "true"
        return cls(**values)
