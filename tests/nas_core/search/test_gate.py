"""CI gates: `nas search --fail-under METRIC=VALUE` (exit 3 on a miss), `--summary-md`, and the example workflow."""

import contextlib
import io
import json
import re
import shlex
import subprocess

import pytest
import typer
import yaml

from flows.cli import app, main
from flows.running import EXIT_FAILED, EXIT_GATE, EXIT_OK, EXIT_USAGE
from nas_core.search.gate import Gate, GateError, check_gates, failure_line, markdown_summary, parse_gate, parse_gates
from nas_core.search.summary import SearchSummary
from tests.conftest import REPO_ROOT, make_project, shared_prefect_harness

WORKFLOW = REPO_ROOT / "examples" / "github-actions-nas.yml"
TINY = ["--budget", "2", "--epochs", "1", "--population", "2", "--workers", "1", "--seed", "0", "--quiet"]


# ---- parsing and checking ------------------------------------------------------------------


def test_parse_gate_reads_metric_and_threshold():
    assert parse_gate("val_accuracy=0.97") == Gate("val_accuracy", 0.97)
    assert parse_gate(" test_f1 = 0.5 ") == Gate("test_f1", 0.5)
    assert parse_gates(["val_accuracy=0.9", "test_accuracy=0.8"]) == [Gate("val_accuracy", 0.9), Gate("test_accuracy", 0.8)]
    assert parse_gates(None) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "is not METRIC=VALUE"),
        ("=0.9", "is not METRIC=VALUE"),
        ("val_accuracy=", "is not METRIC=VALUE"),
        ("bogus=0.9", "unknown metric 'bogus'; choose from val_accuracy, val_f1, test_accuracy, test_f1"),
        ("params=100", "unknown metric 'params'"),
        ("val_accuracy=abc", "'abc' is not a number"),
        ("val_accuracy=nan", "finite"),
    ],
)
def test_malformed_gates_are_refused(text, message):
    with pytest.raises(GateError, match=re.escape(message)) as caught:
        parse_gate(text)
    assert "\n" not in str(caught.value)


def _summary(best: dict | None) -> SearchSummary:
    if best is not None:
        best = {"hash": "h", "mlflow_run_id": "c", "fidelity": 1, "candidate_test_accuracy": None, "final_run_id": None,
                "genome": {}, **best}  # fmt: skip
    return SearchSummary.from_dict({
        "search_id": "s-1", "dataset": {"name": "digits", "version": "abc.dir"}, "strategy": "random", "budget": 3,
        "seed": 0, "mlflow_run_id": "r|1", "mlflow_experiment": "nas-digits", "mlflow_tracking_uri": "memory:",
        "mlflow_ui": "", "output": "out", "fidelity": {"mode": "none"}, "proxy": None, "final": None,
        "candidates": [{"status": "ok"}, {"status": "failed"}, {"status": "ok"}], "best": best,
    })  # fmt: skip


def test_check_gates_compares_with_the_best_candidate():
    best = {"val_accuracy": 0.9, "val_f1": 0.88, "test_accuracy": 0.85, "test_f1": 0.84, "params": 1234, "flops": 56789,
            "onnx_path": None}  # fmt: skip
    checks = check_gates([Gate("val_accuracy", 0.9), Gate("test_accuracy", 0.86)], _summary(best))
    assert [c.passed for c in checks] == [True, False]  # equal to the threshold passes; under it misses
    assert failure_line(checks) == "gate failed: test_accuracy 0.85 < 0.86"
    assert not check_gates([Gate("val_accuracy", 0.0)], _summary(None))[0].passed  # nothing trained: every gate misses


def test_markdown_without_a_best_candidate_says_so():
    text = markdown_summary(_summary(None), check_gates([Gate("val_accuracy", 0.5)], _summary(None)))
    assert "| best | none: every candidate failed |" in text
    assert "| candidates | 2 ok, 1 failed |" in text
    assert "| MLflow run | `r\\|1` (experiment `nas-digits`) |" in text  # a pipe inside a cell is escaped
    assert text.startswith("### NAS search: gate failed\n")


# ---- the command line, with real searches ----------------------------------------------------


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """Two tiny real searches in one project: one gate that the best passes, one that it cannot."""
    project = make_project(tmp_path_factory.mktemp("gate") / "project")
    with pytest.MonkeyPatch.context() as mp, shared_prefect_harness():
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.chdir(project)
        common = ["search", "--project-dir", str(project), *TINY]
        passed = _run([*common, "--output", "out1", "--summary-md", "reports/passed.md",
                       "--fail-under", "val_accuracy=0.01", "--fail-under", "test_accuracy=0"])  # fmt: skip
        missed = _run([*common, "--output", "out2", "--summary-md", "missed.md",
                       "--fail-under", "test_accuracy=0", "--fail-under", "val_accuracy=1"])  # fmt: skip
    return project, passed, missed


@pytest.mark.slow
def test_a_gate_the_best_passes_exits_0_and_says_so(gated):
    project, (code, out, err), _ = gated
    assert code == EXIT_OK, err[-2000:]
    best = json.loads((project / "out1" / "summary.json").read_text())["best"]
    assert f"gate passed: val_accuracy {best['val_accuracy']:.6g} >= 0.01, test_accuracy {best['test_accuracy']:.6g} >= 0" in out
    assert f"Markdown summary: {project / 'reports' / 'passed.md'}" in out


@pytest.mark.slow
def test_an_impossible_gate_exits_3_with_one_line_naming_the_metric(gated):
    project, _, (code, out, err) = gated
    assert code == EXIT_GATE == 3
    best = json.loads((project / "out2" / "summary.json").read_text())["best"]
    assert best["val_accuracy"] < 1
    lines = [line for line in err.splitlines() if line.startswith("gate failed")]
    assert lines == [f"gate failed: val_accuracy {best['val_accuracy']:.6g} < 1"]  # the passing gate is not named
    assert (project / "out2" / "model.onnx").is_file()  # the search itself finished: only the gate missed


@pytest.mark.slow
def test_markdown_summary_has_the_numbers_of_summary_json(gated):
    project, _, _ = gated
    summary = json.loads((project / "out1" / "summary.json").read_text())
    best, text = summary["best"], (project / "reports" / "passed.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "### NAS search: gate passed"
    rows = dict(line.strip("|").split(" | ", 1) for line in lines if line.startswith("| ") and " | " in line)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["search"] == f"`{summary['search_id']}`"
    assert rows["dataset"] == f"digits (version `{summary['dataset']['version']}`)"
    assert rows["strategy"] == "evolution (budget 2, seed 0)"
    assert rows["candidates"] == "2 ok, 0 failed"
    assert rows["best val accuracy"] == f"{best['val_accuracy']:.4f}"
    assert rows["best test accuracy"] == f"{best['test_accuracy']:.4f}"
    assert rows["params"] == f"{best['params']:,}" and rows["FLOPs"] == f"{best['flops']:,}"
    assert rows["ONNX model"] == "`out1/model.onnx`"  # relative to the folder the command ran in
    assert rows["MLflow run"] == f"`{summary['mlflow_run_id']}` (experiment `nas-digits`)"
    assert rows["gate"].startswith("passed: val_accuracy ")
    missed = (project / "missed.md").read_text()
    assert missed.startswith("### NAS search: gate failed\n") and "| gate | **failed**: test_accuracy " in missed


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("foo", "is not METRIC=VALUE"),
        ("bogus=0.9", "unknown metric 'bogus'"),
        ("val_accuracy=abc", "'abc' is not a number"),
        ("val_accuracy=1.5", "val_accuracy is a fraction from 0 to 1"),
        ("test_f1=-0.1", "test_f1 is a fraction from 0 to 1"),
    ],
)
def test_bad_gate_exits_2_before_anything_is_written(tmp_path, monkeypatch, gate, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, out, err = _run(["search", "--project-dir", str(tmp_path), "--output", "out", "--summary-md", "s.md",
                           "--fail-under", "val_accuracy=0.5", "--fail-under", gate])  # fmt: skip
    assert code == EXIT_USAGE
    assert err.strip().count("\n") == 0 and err.startswith("error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_unusable_summary_path_and_unreported_metric_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "reports").mkdir()
    code, _, err = _run(["search", "--output", "out", "--summary-md", "reports"])
    assert (code, err.startswith("error: --summary-md 'reports' is a folder")) == (EXIT_USAGE, True)
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|": {"v": 90, "t": 89}}))
    args = ["search", "--space", "nb201", "--evaluator", f"table:{table}", "--select-metric", "v", "--report-metric", "t"]
    code, _, err = _run([*args, "--output", "out", "--fail-under", "val_f1=0.5"])
    assert code == EXIT_USAGE and "a table evaluator reports only val_accuracy and test_accuracy" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports", "t.json"]


def test_exit_codes_are_distinct_and_documented(capsys):
    assert len({EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATE}) == 4
    assert main(["search", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for flag in ("--fail-under", "--summary-md", "METRIC=VALUE"):
        assert flag in help_text
    assert "Exit codes: 0 success; 1 the search failed; 2 bad input" in help_text
    assert "3 the best missed a --fail-under gate" in help_text


# ---- the example CI workflow ---------------------------------------------------------------


def _steps() -> list[dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "push" in triggers
    (job,) = workflow["jobs"].values()
    return job["steps"]


def _nas_search_args(steps: list[dict]) -> list[str]:
    (script,) = [s["run"] for s in steps if "nas search" in s.get("run", "")]
    joined = script.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.strip().startswith("nas search"))
    return shlex.split(line)[2:]


def test_example_workflow_pulls_data_searches_with_a_gate_and_uploads_artifacts():
    steps = _steps()
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    (python,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    assert str(python["with"]["python-version"]) == "3.11"
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "pip install -q -e ." in runs  # the README's install command
    assert "dvc pull" in runs and "secrets.DVC_REMOTE_URL" in WORKFLOW.read_text()
    assert '>> "$GITHUB_STEP_SUMMARY"' in runs
    for step in steps:  # every shell step parses as bash
        if "run" in step:
            proc = subprocess.run(["bash", "-n"], input=step["run"], capture_output=True, text=True)
            assert proc.returncode == 0, (step.get("name"), proc.stderr)
    (upload,) = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert upload["if"] == "always()"
    assert {"out/model.onnx", "out/summary.json"} <= set(upload["with"]["path"].split())


def test_example_workflow_search_command_is_valid_for_this_cli():
    args = _nas_search_args(_steps())
    command = typer.main.get_command(app).commands["search"]  # type: ignore[attr-defined]
    params = command.make_context("search", list(args)).params  # parses exactly as `nas search` would, runs nothing
    assert [str(g) for g in parse_gates(params["fail_under"])] == ["val_accuracy=0.93"]
    assert str(params["summary_md"]) == "summary.md" and str(params["output"]) == "out"
