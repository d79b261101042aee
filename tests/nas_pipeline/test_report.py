"""The HTML report: one self-contained, escaped file; curves from a real MLflow store; ``nas report``."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import pytest

from flows.cli import EXIT_OK, EXIT_USAGE, main
from nas_core.search.summary import SearchSummary
from nas_pipeline.report import REPORT_FILE, ReportError, curve_run_ids, fetch_histories, load_summary, write_report
from tests.nas_pipeline.test_plots import hand_made_candidates, summary_of

MALICIOUS = '<script>alert("x")</script>'
GENOME = {
    "format": 1,
    "nodes": [
        {"id": "input", "op": "input", "settings": {}},
        {"id": "n0", "op": "conv", "settings": {"kernel": 3, "channels": 32, "stride": 1}},
        {"id": "n1", "op": "maxpool", "settings": {"kernel": 3, "stride": 2}},
        {"id": "output", "op": "output", "settings": {}},
    ],
    "edges": [["input", "n0"], ["n0", "n1"], ["n1", "output"], ["n0", "output"]],
}
HISTORY = [{"epoch": 1.0, "train_loss": 1.5, "val_loss": 1.6, "val_accuracy": 0.6, "val_f1": 0.55},
           {"epoch": 2.0, "train_loss": 0.9, "val_loss": 1.0, "val_accuracy": 0.9, "val_f1": 0.88}]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    """A real SQLite MLflow store with one run holding HISTORY; (tracking URI, run id)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("report"))
    for row in HISTORY:
        for key, value in row.items():
            if key != "epoch":
                client.log_metric(run.info.run_id, key, value, step=int(row["epoch"]))
    return uri, run.info.run_id


def best_model(run_id: str, **fields) -> dict:
    """Every field of a summary's best model (architecture h2 of hand_made_candidates)."""
    best = {
        "hash": "h2", "mlflow_run_id": run_id, "fidelity": 12, "val_accuracy": 0.9, "val_f1": 0.88, "test_accuracy": 0.87,
        "test_f1": 0.86, "candidate_test_accuracy": 0.87, "final_run_id": None, "params": 7000, "flops": 350000,
        "genome": GENOME, "registry": None,
    }  # fmt: skip
    return {**best, **fields}


def make_search(folder: Path, tracking_uri: str, best_run: str = "run7") -> Path:
    """A hand-made finished search folder: search.json and summary.json."""
    folder.mkdir(parents=True)
    candidates = hand_made_candidates()
    candidates[2]["reason"] = MALICIOUS
    candidates[6]["mlflow_run_id"] = best_run
    summary = SearchSummary.from_dict({
        "search_id": "20260101-000000-abcdef", "mlflow_tracking_uri": tracking_uri, "mlflow_experiment": "nas-digits",
        "mlflow_run_id": "parent0", "mlflow_ui": f"mlflow ui --backend-store-uri {tracking_uri}", "output": str(folder),
        "dataset": {"name": "digits", "version": "22788fc6.dir"}, "strategy": "evolution", "budget": 8, "seed": 0,
        "elapsed_seconds": 83.4, "candidates": candidates,
        "best": best_model(best_run, onnx_path=str(folder / "model.onnx")),
        "fidelity": {"rungs": [4, 12], "eta": 3},
        "proxy": {"name": "synflow", "rank_correlation": 0.41},
        "final": None,
    })  # fmt: skip
    (folder / "search.json").write_text(json.dumps({"search_id": summary.search_id, "config": {"space": "image"}}))
    summary.write(folder)
    return folder


def no_external_references(page: str) -> bool:
    return re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.IGNORECASE) is None


def test_report_is_one_self_contained_escaped_file(tmp_path):
    folder = make_search(tmp_path / "search", "sqlite:///nowhere.db")
    path = write_report(folder, histories={"run7": HISTORY, "run2": HISTORY[:1]})
    assert path == folder / REPORT_FILE
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "search.json", "summary.json"]
    page = path.read_text()
    assert no_external_references(page)
    # 3 search plots, the best architecture, 2 learning curves
    assert page.count("data:image/png;base64,") == 6
    assert "NAS search 20260101-000000-abcdef" in page
    assert page.count("<tr class=") == 8  # one row per candidate
    assert MALICIOUS not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    shown = ["digits", "22788fc6.dir", "evolution", "0.9000", "0.8700", "1:23", "parent0", "model.onnx", "synflow"]
    assert [s for s in shown if s not in page] == []


def test_report_without_curves_or_best(tmp_path):
    folder = make_search(tmp_path / "search", "sqlite:///nowhere.db")
    dataclasses.replace(load_summary(folder), best=None).write(folder)
    page = write_report(folder, tmp_path / "elsewhere" / "r.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "every candidate failed" in page and "Learning curves" not in page
    with pytest.raises(ReportError, match="has not finished"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="is not a search summary"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{")
    with pytest.raises(ReportError, match="cannot read"):
        load_summary(tmp_path)


def test_fetch_histories_from_a_real_store(store, tmp_path):
    uri, run_id = store
    assert fetch_histories(uri, [run_id, "0123456789abcdef0123456789abcdef"]) == {run_id: HISTORY}  # unknown runs left out
    missing = tmp_path / "missing.db"
    with pytest.raises(ReportError, match="no MLflow store"):
        fetch_histories(f"sqlite:///{missing}", [run_id])
    assert not missing.exists()


def test_curve_run_ids_best_first():
    summary = summary_of(hand_made_candidates(), best=best_model("run7"), final={"mlflow_run_id": "fin"})
    assert curve_run_ids(summary, count=3) == ["run7", "fin", "run4", "run2"]  # the best, the final model, the top 3


def test_nas_report_command(store, tmp_path, monkeypatch, capsys):
    uri, run_id = store
    monkeypatch.chdir(tmp_path)
    folder = make_search(tmp_path / "outputs" / "20260101-000000-abcdef", uri, best_run=run_id)
    assert main(["report", "20260101-000000-abcdef", "--output", "out/report.html"]) == EXIT_OK
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5  # the best's curves came from MLflow
    assert str(tmp_path / "out" / "report.html") in capsys.readouterr().out

    dataclasses.replace(load_summary(folder), mlflow_tracking_uri=f"sqlite:///{tmp_path}/gone.db").write(folder)
    assert main(["report", str(folder)]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: the report has no learning curves") and len(captured.err.splitlines()) == 1
    assert (folder / REPORT_FILE).is_file()


def test_nas_report_bad_target(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report", "does-not-exist"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does-not-exist" in err and len(err.splitlines()) == 1
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "search.json").write_text(json.dumps({"search_id": "x", "config": {}}))
    assert main(["report", "unfinished"]) == EXIT_USAGE
    assert "has not finished" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_the_searchs_reporter_draws_each_search_plot_once_and_embeds_those(tmp_path, monkeypatch):
    from nas_pipeline import plots
    from nas_pipeline.report import PLOTS_DIR, HtmlReporter

    folder = make_search(tmp_path / "search", "sqlite:///nowhere.db")
    drawn = []
    monkeypatch.setattr(plots, "search_plots", lambda *args, real=plots.search_plots: drawn.append(real(*args)) or drawn[-1])
    logged = HtmlReporter().report(load_summary(folder))
    assert len(drawn) == 1, "the report shows the plots the search logged, not a second drawing of them"
    assert sorted(logged) == sorted((path, PLOTS_DIR) for path in drawn[0].values())
    page = (folder / REPORT_FILE).read_text()
    for path in drawn[0].values():
        assert base64.b64encode(path.read_bytes()).decode("ascii") in page
