"""export pareto: a real search hands over its accuracy/latency front, each model checked, registered and bundled."""

from __future__ import annotations

import json

import onnx
import pytest
from mlflow.tracking import MlflowClient

from nas_core.search.front import FRONT_DIR
from nas_core.search.summary import SearchSummary
from nas_pipeline.model_registry import CHAMPION_ALIAS, NOT_A_CANDIDATE
from nas_pipeline.pareto_export import FASTEST_ALIAS, PARETO_DIR, aliases_for, measured_ms, tier_alias
from tests.conftest import make_project, search_directly


def test_tier_aliases_are_valid_alias_names():
    assert tier_alias(2) == "under_2ms" and tier_alias(2.5) == "under_2p5ms" and tier_alias(0.125) == "under_0p125ms"


def test_aliases_follow_the_measured_latency_not_the_prediction():
    entries = [
        {"hash": "a", "val_accuracy": 0.9, "predicted_latency_ms": 1.0, "measured_latency_ms": 3.0},
        {"hash": "b", "val_accuracy": 0.8, "predicted_latency_ms": 2.0, "measured_latency_ms": 1.5},
        {"hash": "c", "val_accuracy": 0.85, "predicted_latency_ms": 0.5, "measured_latency_ms": 1.9},
    ]
    aliases = aliases_for(entries, (2.0, 10.0, 1.0))
    assert aliases == {FASTEST_ALIAS: "b", "under_2ms": "c", "under_10ms": "a"}  # nothing is measured under 1 ms
    assert aliases_for([], (1.0,)) == {}


def test_a_model_whose_card_was_timed_otherwise_is_timed_again(tmp_path):
    from types import SimpleNamespace

    import torch

    from nas_pipeline.latency import part_onnx

    (tmp_path / "model.onnx").write_bytes(part_onnx(torch.nn.Linear(4, 3), (4,)))
    (tmp_path / "handoff").mkdir()
    per_batch = [{"batch_size": 1, "median_ms": 123.0, "per_input_ms": 123.0}]
    card = {"latency": {"threads": 1, "provider": "CPUExecutionProvider", "per_batch": per_batch}}
    (tmp_path / "handoff" / "model_card.json").write_text(json.dumps(card))
    item = {"onnx_path": str(tmp_path / "model.onnx"), "handoff_path": str(tmp_path / "handoff")}
    request = SimpleNamespace(latency_threads=1, latency_provider="CPUExecutionProvider", latency_batch=1)
    assert measured_ms(item, request) == 123.0, "timed as the search times: the card's figure"
    for other in ({"latency_threads": 2}, {"latency_batch": 8}):
        figure = measured_ms(item, SimpleNamespace(**{**vars(request), **other}))
        assert 0 < figure < 123.0, f"the card does not hold a figure for {other}: timed here"
    assert 0 < measured_ms({**item, "handoff_path": None}, request) < 123.0, "no card: timed here"


@pytest.fixture(scope="module")
def front_search(tmp_path_factory):
    """A tiny real search (no Prefect) trading accuracy off against latency, its front exported."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        project = make_project(tmp_path_factory.mktemp("pareto") / "project")
        yield search_directly(project, "pareto", strategy="nsga2", objectives="val_accuracy,latency_ms", budget=8,
                              population=4, epochs=2, export="pareto", pareto_limit=3, export_latency_ms=(1000.0,))  # fmt: skip


@pytest.mark.slow
def test_every_front_model_is_exported_checked_and_bundled(front_search):
    summary = SearchSummary.read(front_search.output)
    front = summary.pareto
    assert front and 1 <= len(front) <= 3 and sum(m["best"] for m in front) == 1
    assert [m["measured_latency_ms"] for m in front] == sorted(m["measured_latency_ms"] for m in front)
    for model in front:
        onnx.checker.check_model(model["onnx_path"])
        assert model["onnx_max_abs_diff"] < 1e-4 and model["latency_batch"] == 1 and model["predicted_latency_ms"] > 0
        card = json.loads((front_search.output.joinpath(model["handoff_path"]) / "model_card.json").read_text())
        assert card["architecture"]["hash"] == model["hash"]
        assert card["latency"]["predicted"]["predicted_ms"] == model["predicted_latency_ms"]
        at_batch = next(r["median_ms"] for r in card["latency"]["per_batch"] if r["batch_size"] == model["latency_batch"])
        assert model["measured_latency_ms"] == at_batch, "one figure per model: its card's, not a second timing"
        if not model["best"]:
            assert model["onnx_path"] == str(front_search.output / PARETO_DIR / model["hash"][:12] / "model.onnx")
    assert not (front_search.output / FRONT_DIR).exists(), "the front's weights are dropped once exported"
    assert "Handed over: the accuracy/latency front" in (front_search.output / "report.html").read_text()
    assert (front_search.output / "plots" / "accuracy_vs_latency.png").is_file()


@pytest.mark.slow
def test_front_models_are_registered_with_aliases_and_never_take_the_champion(front_search):
    summary = SearchSummary.read(front_search.output)
    client = MlflowClient(summary.mlflow_tracking_uri)
    name = summary.best.registry["name"]
    aliases = {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    by_version = {m["registry_version"]: m for m in summary.pareto}
    assert aliases[CHAMPION_ALIAS] == summary.best.registry["version"]
    fastest = min(summary.pareto, key=lambda m: m["measured_latency_ms"])
    assert aliases[FASTEST_ALIAS] == fastest["registry_version"] and FASTEST_ALIAS in fastest["aliases"]
    assert aliases["under_1000ms"] == summary.best.registry["version"], "every model is under 1 s: the most accurate"
    for version, model in by_version.items():
        tags = client.get_model_version(name, version).tags
        assert tags["nas.hash"] == model["hash"] and tags["nas.search_id"] == "pareto"
        if not model["best"]:
            assert tags["nas.promoted"] == "false" and tags["nas.not_promoted_reason"] == NOT_A_CANDIDATE
