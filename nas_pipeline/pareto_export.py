"""``export: pareto``: the models of the accuracy/latency front handed over beside the best.

Each front model (chosen by the core, :mod:`nas_core.search.front`) is exported like the best: ONNX checked by
``onnx.checker`` and against PyTorch, logged on the search's run, registered as a version of the dataset's
registered model (never moving ``champion``: that alias follows the best, by validation accuracy), and given its
own handoff bundle, in ``<output>/pareto/<hash>/``. Every handed-over model, the best included, has its latency
on the handoff runtime at the search's latency batch size and threads (its model card's figure), and the aliases
are set from those measured figures: ``fastest``, and ``under_<X>ms`` for each latency target X (the most accurate
model measured under it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nas_core.search.ports import ExportRequest, FrontModel, Tracker
from nas_pipeline.handoff import CARD_JSON
from nas_pipeline.latency import open_session, steady_ms
from nas_pipeline.model_registry import Registration, register_search_best, set_aliases
from nas_pipeline.onnx_export import ExportReport

PARETO_DIR = "pareto"  # in the search's output folder: one folder per front model other than the best
FASTEST_ALIAS = "fastest"


def tier_alias(target_ms: float) -> str:
    """The alias of a latency target: 2 -> ``under_2ms``, 2.5 -> ``under_2p5ms`` (aliases take no dots)."""
    return f"under_{target_ms:g}ms".replace(".", "p")


def measured_ms(item: dict[str, Any], request: ExportRequest) -> float:
    """Milliseconds per call of a handed-over model on the handoff runtime (:func:`~nas_pipeline.latency.steady_ms`),
    at the batch size, provider and pinned threads the search predicted latencies for: its model card's figure when
    the card was timed so (it is timed the same way, about a second a model), else timed here."""
    card = Path(item["handoff_path"]) / CARD_JSON if item.get("handoff_path") else None
    if card is not None and card.is_file():
        latency = json.loads(card.read_text())["latency"]
        if (latency["threads"], latency["provider"]) == (request.latency_threads, request.latency_provider):
            figure = next((r["median_ms"] for r in latency["per_batch"] if r["batch_size"] == request.latency_batch), None)
            if figure is not None:
                return figure
    session = open_session(Path(item["onnx_path"]), request.latency_threads, request.latency_provider)
    return round(steady_ms(session, request.latency_batch), 5)


def aliases_for(entries: Sequence[dict[str, Any]], targets: Sequence[float]) -> dict[str, str]:
    """alias -> hash: ``fastest`` by measured latency, ``under_<X>ms`` the most accurate measured under X (ties:
    the faster); a target no model meets gets no alias."""
    if not entries:
        return {}
    aliases = {FASTEST_ALIAS: min(entries, key=lambda e: (e["measured_latency_ms"], -e["val_accuracy"]))["hash"]}
    for target in targets:
        under = [e for e in entries if e["measured_latency_ms"] <= target]
        if under:
            aliases[tier_alias(target)] = max(under, key=lambda e: (e["val_accuracy"], -e["measured_latency_ms"]))["hash"]
    return aliases


def member_request(request: ExportRequest, member: FrontModel, folder: Path) -> ExportRequest:
    """The export request of a front model: its own network, metrics (as trained), provenance and output folder."""
    evaluation = member.evaluation
    metrics = {k: float(v) for k, v in evaluation.metrics.items() if k in ("val_accuracy", "val_f1", "test_accuracy", "test_f1")}
    provenance = request.provenance.for_model(evaluation.hash, evaluation.mlflow_run_id)
    return dataclasses.replace(request, model=member.model, best=evaluation, metrics=metrics, provenance=provenance,
                               output=folder, quantize="none", front=None)  # fmt: skip


def entry(
    request: ExportRequest, report: ExportReport, registration: Registration | None, handoff: Path | None
) -> dict[str, Any]:
    """The summary.json entry of one handed-over model (its measured latency and aliases are added after)."""
    best = request.best
    return {
        "hash": best.hash,
        "mlflow_run_id": best.mlflow_run_id,
        "val_accuracy": float(request.metrics["val_accuracy"]),
        "test_accuracy": request.metrics.get("test_accuracy"),
        "predicted_latency_ms": best.metrics.get("latency_ms"),
        "params": int(best.metrics["params"]),
        "onnx_path": str(report.path),
        "onnx_max_abs_diff": report.max_abs_diff,
        "handoff_path": str(handoff) if handoff else None,
        "registry_version": registration.version if registration else None,
        "registered_model": registration.name if registration else None,
    }


def finish_front(request: ExportRequest, entries: list[dict[str, Any]], tracker: Tracker) -> tuple[dict[str, Any], ...]:
    """Time every handed-over model, set the aliases from the measured figures, log them; the summary's ``pareto``."""
    for item in entries:
        item["measured_latency_ms"] = measured_ms(item, request)
        item["latency_batch"] = request.latency_batch
    aliases = aliases_for(entries, request.latency_targets)
    for item in entries:
        item["aliases"] = sorted(alias for alias, hash_ in aliases.items() if hash_ == item["hash"])
        item["best"] = item["hash"] == request.best.hash
    registered = {item["hash"]: item for item in entries if item["registry_version"] is not None}
    if registered:
        name = next(iter(registered.values()))["registered_model"]
        versions = {alias: registered[h]["registry_version"] for alias, h in aliases.items() if h in registered}
        set_aliases(tracker.tracking_uri, name, versions)
    metrics = {f"pareto_latency_ms_{item['hash'][:8]}": item["measured_latency_ms"] for item in entries}
    tracker.log_metrics(request.search_run_id, {"pareto_models": float(len(entries)), **metrics})
    return tuple(sorted(entries, key=lambda e: (e["measured_latency_ms"], -e["val_accuracy"])))


def export_front_model(request: ExportRequest, member: FrontModel, tracker: Tracker, export: Any, bundle: Any) -> dict[str, Any]:
    """Export, log, register (not as champion) and bundle one front model; its summary entry.

    ``export(request, path) -> ExportReport`` and ``bundle(request, report, registration) -> Path`` are the best's
    own steps (the exporter's), so a front model is checked and handed over exactly like the best.
    """
    folder = request.output / PARETO_DIR / member.evaluation.hash[:12]
    own = member_request(request, member, folder)
    report = export(own, folder / "model.onnx")
    tracker.log_artifact(request.search_run_id, report.path, f"{PARETO_DIR}/{member.evaluation.hash[:12]}")
    registration = register_search_best(own, report.path, tracker.tracking_uri, promote=False)
    return entry(own, report, registration, bundle(own, report, registration))
