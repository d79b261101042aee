"""The search's memory in MLflow: earlier searches and their finished candidate runs, found by their ``nas.`` tags."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from nas_core.genome import Genome
from nas_core.provenance import TAG_PREFIX
from nas_core.search.memory import CANDIDATE_ROLE, EarlierSearch, StoredEvaluation, rank, source_of

if TYPE_CHECKING:
    from nas_pipeline.mlflow_tracking import MlflowTracker


class MlflowMemory:
    """:class:`~nas_core.search.memory.EvaluationMemory` over one MLflow experiment (through the tracker's retries)."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker

    def _tags(self, run: Run) -> dict[str, str]:
        return {k.removeprefix(TAG_PREFIX): v for k, v in run.data.tags.items() if k.startswith(TAG_PREFIX)}

    def _genome(self, run: Run, tags: dict[str, str]) -> Genome:
        if "genome" in tags:
            return Genome.from_dict(json.loads(tags["genome"]))
        with tempfile.TemporaryDirectory() as folder:  # too long for a tag: the run's genome.json
            path = self.tracker._retry(lambda: self.tracker.client.download_artifacts(run.info.run_id, "genome.json", folder))
            return Genome.from_dict(json.loads(Path(path).read_text()))

    def _stored(self, run: Run) -> StoredEvaluation:
        tags = self._tags(run)
        return StoredEvaluation(
            source_of(run.info.run_id, tags), tags["search_id"], tags["hash"], int(tags["fidelity"]),
            self._genome(run, tags), json.loads(tags["metrics"]), run.info.start_time / 1000,
        )  # fmt: skip

    def _finished(self, originals: bool = False, **tags: str) -> list[Run]:
        """Finished candidate runs with these tags, oldest first (``originals``: not the reused copies)."""
        runs = self.tracker.search_runs({"role": CANDIDATE_ROLE, **tags}, status="FINISHED")
        kept = (
            r
            for r in runs
            if f"{TAG_PREFIX}metrics" in r.data.tags and not (originals and f"{TAG_PREFIX}reused_from" in r.data.tags)
        )
        return sorted(kept, key=lambda r: r.info.start_time)

    def searches(self) -> list[EarlierSearch]:
        return _searches(self.tracker.search_runs({"role": "search"}))

    def lookup(self, evaluation_key: str) -> StoredEvaluation | None:
        runs = self._finished(evaluation_key=evaluation_key)
        return self._stored(runs[-1]) if runs else None

    def comparable(self, context_key: str, search_ids: Sequence[str] | None) -> list[StoredEvaluation]:
        runs = self._finished(originals=True, context_key=context_key)
        return [self._stored(r) for r in runs if search_ids is None or r.data.tags[f"{TAG_PREFIX}search_id"] in search_ids]

    def best_of(self, space: str, search_ids: Sequence[str] | None, count: int) -> list[StoredEvaluation]:
        runs = self._finished(originals=True, space=space)
        chosen = [r for r in runs if search_ids is None or r.data.tags[f"{TAG_PREFIX}search_id"] in search_ids]
        chosen.sort(key=lambda r: rank(json.loads(r.data.tags[f"{TAG_PREFIX}metrics"])), reverse=True)
        picked: dict[str, Run] = {}
        for run in chosen:  # the best of each architecture; genomes read for the count kept only
            picked.setdefault(run.data.tags[f"{TAG_PREFIX}hash"], run)
        return [self._stored(r) for r in list(picked.values())[:count]]


def _searches(runs: Sequence[Run]) -> list[EarlierSearch]:
    found = [
        EarlierSearch(r.data.tags[f"{TAG_PREFIX}search_id"], r.data.params.get("space", ""), r.info.start_time / 1000)
        for r in runs
        if f"{TAG_PREFIX}search_id" in r.data.tags
    ]
    return sorted(found, key=lambda s: s.started)


def earlier_searches(tracking_uri: str, experiment: str) -> list[EarlierSearch]:
    """The searches recorded in ``experiment`` of the store, read without writing anything (none: no store yet)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []  # opening it would create it
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.`{TAG_PREFIX}role` = 'search'"
    return _searches(client.search_runs([found.experiment_id], query, max_results=50_000))
