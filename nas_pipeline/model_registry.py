"""MLflow model registry: a search's best model as an ONNX model version, and the ``champion`` alias.

Each dataset has one registered model, ``nas-<dataset>``. Every exported search adds a version (logged with
``mlflow.onnx.log_model`` under the search's parent run, with a signature and an input example). The
``champion`` alias moves to the new version only when its validation accuracy (the selection metric, never a
test metric) is strictly higher than the champion's on the same dataset version; otherwise the version stays
registered with the reason in its ``nas.not_promoted_reason`` tag.

Two searches registering at the same moment: "read the champion, register, move the alias, tag the version" runs
under a lock shared by every process of this machine that uses the same tracking URI and model (see
:func:`~nas_pipeline.mlflow_tracking.store_lock`), so the second one compares with the first one's outcome. With a
remote tracking server, searches on different machines are not serialised: the last one to write the alias wins.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_core.provenance import Provenance
from nas_pipeline.mlflow_tracking import TAG_PREFIX, _retry, store_lock

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from nas_core.search.ports import ExportRequest

REGISTERED_MODEL_PREFIX = "nas-"
CHAMPION_ALIAS = "champion"
MODEL_ARTIFACT_NAME = "registered-model"
INPUT_EXAMPLE_SIZE = 5
# mlflow.onnx.log_model reads the process-wide tracking URI: one registration at a time in this process (and, through
# store_lock, one at a time per model on this machine, so "read the champion, register, move the alias" never interleaves).
_REGISTRY_LOCK = threading.Lock()
NOT_A_CANDIDATE = "handed over beside the search's best (Pareto front): the champion alias follows the best"


def registered_model_name(dataset: str) -> str:
    """The registered model that holds every search's best model on ``dataset``: ``nas-`` and the dataset's folder
    under ``data/``, as the experiment's name (``npz:/tmp/a/b.npz`` -> ``nas-npz-b``, wherever the file lies)."""
    from nas_core.data.preparation import DatasetError, dataset_folder

    try:
        folder = dataset_folder(dataset)
    except DatasetError:  # not a dataset source (a table's name, say): its name, made safe
        folder = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset).strip("-")
    return REGISTERED_MODEL_PREFIX + folder


@dataclass(frozen=True)
class ModelFacts:
    """What the registry needs to know about a model to tag it and compare it with the champion."""

    dataset: str
    dataset_version: str
    search_id: str
    hash: str
    val_accuracy: float
    test_accuracy: float
    provenance: Provenance | None = None  # written as the same tags as on the runs and in the ONNX metadata

    def tags(self) -> dict[str, str]:
        own = {f"{TAG_PREFIX}{k}": str(v) for k, v in asdict(self).items() if k != "provenance"}
        return {**(self.provenance.tags() if self.provenance else {}), **own}


@dataclass(frozen=True)
class Champion:
    """The version the ``champion`` alias points at, as its tags describe it."""

    version: str
    dataset_version: str | None
    val_accuracy: float | None


@dataclass(frozen=True)
class Registration:
    """The outcome of registering one model: its version and whether it became the champion, and why."""

    name: str
    version: str
    model_uri: str
    promoted: bool
    reason: str
    champion_version: str  # the champion after this registration
    previous_champion_version: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"alias": CHAMPION_ALIAS, **asdict(self)}


def decide(facts: ModelFacts, champion: Champion | None) -> tuple[bool, str]:
    """Whether a model with ``facts`` replaces ``champion``, and the reason either way."""
    if champion is None:
        return True, "first model registered: there was no champion"
    ours = f"val_accuracy {facts.val_accuracy:.6g}"
    if champion.dataset_version != facts.dataset_version:
        return False, (
            f"dataset version {facts.dataset_version} differs from champion version {champion.version}'s "
            f"({champion.dataset_version or 'unknown'}): validation accuracies are not comparable"
        )
    if champion.val_accuracy is None:
        return False, f"champion version {champion.version} has no {TAG_PREFIX}val_accuracy tag to compare with"
    theirs = f"champion version {champion.version}'s {champion.val_accuracy:.6g} on the same dataset version"
    if facts.val_accuracy > champion.val_accuracy:
        return True, f"{ours} beats {theirs}"
    return False, f"{ours} does not beat {theirs}"


def current_champion(client: MlflowClient, name: str) -> Champion | None:
    """The version under the ``champion`` alias of ``name``; None when there is none (or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        model = _retry(lambda: client.get_registered_model(name))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = dict(model.aliases or {}).get(CHAMPION_ALIAS)
    if version is None:
        return None
    tags = _retry(lambda: client.get_model_version(name, str(version))).tags
    try:
        accuracy: float | None = float(tags[f"{TAG_PREFIX}val_accuracy"])
    except (KeyError, ValueError):
        accuracy = None
    return Champion(str(version), tags.get(f"{TAG_PREFIX}dataset_version"), accuracy)


def already_registered(client: MlflowClient, name: str, facts: ModelFacts) -> Registration | None:
    """The version this search already registered for this model (a resumed search exports again), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _retry(lambda: list(client.search_model_versions(f"name = '{name}'")))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    wanted = {f"{TAG_PREFIX}search_id": facts.search_id, f"{TAG_PREFIX}hash": facts.hash}
    for found in versions:
        tags = found.tags or {}
        if all(tags.get(k) == v for k, v in wanted.items()) and f"{TAG_PREFIX}promoted" in tags:
            champion = current_champion(client, name)
            promoted = tags[f"{TAG_PREFIX}promoted"] == "true"
            reason = tags.get(f"{TAG_PREFIX}promotion_reason" if promoted else f"{TAG_PREFIX}not_promoted_reason", "")
            return Registration(
                name=name,
                version=str(found.version),
                model_uri=f"models:/{name}/{found.version}",
                promoted=promoted,
                reason=reason,
                champion_version=champion.version if champion else str(found.version),
                previous_champion_version=tags.get(f"{TAG_PREFIX}previous_champion"),
            )
    return None


@contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for a moment, then restore the URI and its environment variable."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    before, env_before = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # this unsets MLFLOW_TRACKING_URI when before is None ...
        if env_before is not None:  # ... so put back the user's own setting
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def register_onnx(
    tracking_uri: str,
    run_id: str,
    onnx_path: Path,
    input_example: np.ndarray,
    facts: ModelFacts,
    name: str | None = None,
    promote: bool = True,
) -> Registration:
    """Log ``onnx_path`` under ``run_id``, register it as a new version of ``name`` and move the alias if it wins
    (never, with ``promote`` False: a model handed over beside the best, e.g. of the Pareto front)."""
    import mlflow
    import mlflow.onnx
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    name = name or registered_model_name(facts.dataset)
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    signature = infer_signature(example, session.run(None, {session.get_inputs()[0].name: example})[0])
    with _REGISTRY_LOCK, store_lock(tracking_uri, f"registered model {name}"), _fluent_tracking_uri(tracking_uri):
        client = MlflowClient(tracking_uri, registry_uri=mlflow.get_registry_uri())
        earlier = already_registered(client, name, facts)
        if earlier is not None:
            return earlier
        champion = current_champion(client, name)
        # Created here, in the run's experiment: left to itself, log_model would put the model in the fluent API's
        # current experiment (the Default one, with artifacts in ./mlruns of whatever folder this runs in).
        experiment_id = _retry(lambda: client.get_run(run_id)).info.experiment_id
        logged = _retry(
            lambda: client.create_logged_model(experiment_id, MODEL_ARTIFACT_NAME, source_run_id=run_id, tags=facts.tags())
        )
        # MLflow prints "Successfully registered model ..." / "Created version ..." on stderr; the search says it in
        # its own summary lines, so they are kept out of the terminal.
        with redirect_stderr(io.StringIO()):
            info = mlflow.onnx.log_model(
                onnx.load(str(onnx_path)),
                model_id=logged.model_id,
                run_id=run_id,
                registered_model_name=name,
                signature=signature,
                input_example=example,
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),  # no slow requirement inference
                onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=False,
                tags=facts.tags(),
            )
        version = str(info.registered_model_version)
        promoted, reason = decide(facts, champion) if promote else (False, NOT_A_CANDIDATE)
        if promoted:
            _retry(lambda: client.set_registered_model_alias(name, CHAMPION_ALIAS, version))
        outcome = {"promoted": str(promoted).lower(), ("promotion_reason" if promoted else "not_promoted_reason"): reason}
        if champion is not None:
            outcome["previous_champion"] = champion.version
        for key, value in outcome.items():
            _retry(lambda k=key, v=value: client.set_model_version_tag(name, version, f"{TAG_PREFIX}{k}", v))
    return Registration(
        name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        promoted=promoted,
        reason=reason,
        champion_version=version if promoted or champion is None else champion.version,
        previous_champion_version=champion.version if champion else None,
    )


def set_aliases(tracking_uri: str, name: str, aliases: dict[str, str]) -> None:
    """Point each alias of registered model ``name`` at its version (e.g. ``fastest``), under the registry lock."""
    import mlflow
    from mlflow.tracking import MlflowClient

    with _REGISTRY_LOCK, store_lock(tracking_uri, f"registered model {name}"), _fluent_tracking_uri(tracking_uri):
        client = MlflowClient(tracking_uri, registry_uri=mlflow.get_registry_uri())
        for alias, version in aliases.items():
            _retry(lambda a=alias, v=version: client.set_registered_model_alias(name, a, str(v)))


def register_search_best(request: ExportRequest, onnx_path: Path, tracking_uri: str, promote: bool = True) -> Registration:
    """Register a search's exported model (already written to ``onnx_path``) under the search's parent run; with
    ``promote`` False it never becomes the champion."""
    provenance = request.provenance
    facts = ModelFacts(
        dataset=provenance.dataset,
        dataset_version=provenance.dataset_version,
        search_id=provenance.search_id,
        hash=request.best.hash,
        val_accuracy=float(request.metrics["val_accuracy"]),
        test_accuracy=float(request.metrics["test_accuracy"]),
        provenance=provenance,
    )
    example = request.data.x["test"][:INPUT_EXAMPLE_SIZE]
    return register_onnx(tracking_uri, request.search_run_id, onnx_path, example, facts, promote=promote)
