"""The ``nas`` command: bad input gives one line and exit code 2, leaving nothing behind; a real run works."""

import json
import sys
from pathlib import Path

import pytest

from flows import cli
from flows.cli import EXIT_USAGE, main
from nas_core.config import load_config

NAS = str(Path(sys.executable).parent / "nas")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _bad_input(capsys, args, expected):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert expected in err
    return err


def _nothing_written(folder: Path, allowed: set[str] = frozenset()):
    assert {p.name for p in folder.iterdir()} <= set(allowed)


def test_unknown_dataset(workdir, capsys):
    _bad_input(capsys, ["search", "--dataset", "imagenet"], "unknown dataset 'imagenet'")
    _nothing_written(workdir)


def test_unknown_strategy(workdir, capsys):
    _bad_input(capsys, ["search", "--strategy", "magic"], "unknown strategy 'magic'")
    _nothing_written(workdir)


def test_malformed_yaml(workdir, capsys):
    (workdir / "bad.yaml").write_text("budget: [1, 2\n")
    _bad_input(capsys, ["search", "--config", "bad.yaml"], "not valid YAML")
    _nothing_written(workdir, {"bad.yaml"})


def test_unknown_config_key(workdir, capsys):
    (workdir / "typo.yaml").write_text("budgett: 3\n")
    _bad_input(capsys, ["search", "--config", "typo.yaml"], "unknown setting 'budgett'")
    _nothing_written(workdir, {"typo.yaml"})


def test_budget_below_one(workdir, capsys):
    _bad_input(capsys, ["search", "--budget", "0"], "budget")
    _nothing_written(workdir)


def test_non_numeric_flag_is_one_line_too(workdir, capsys):
    _bad_input(capsys, ["search", "--budget", "many"], "--budget")
    _nothing_written(workdir)


def test_unwritable_output(workdir, capsys):
    (workdir / "a_file").write_text("x")
    _bad_input(capsys, ["search", "--output", "a_file/run"], "not writable")
    _bad_input(capsys, ["search", "--output", "a_file"], "not a folder")
    _nothing_written(workdir, {"a_file"})


def test_invalid_genome_file(workdir, capsys):
    genome = {"nodes": [{"id": "input", "op": "input"}, {"id": "x", "op": "warp"}, {"id": "output", "op": "output"}],
              "edges": [["input", "x"], ["x", "output"]]}  # fmt: skip
    (workdir / "g.json").write_text(json.dumps(genome))
    _bad_input(capsys, ["search", "--init-genome", "g.json"], "unknown op 'warp'")
    (workdir / "broken.json").write_text("{not json")
    _bad_input(capsys, ["validate", "broken.json"], "not valid JSON")
    _nothing_written(workdir, {"g.json", "broken.json"})


def test_validate_prints_the_hash(workdir, capsys):
    conv = {"id": "c", "op": "conv", "settings": {"kernel": 3, "channels": 8, "stride": 1}}
    genome = {"nodes": [{"id": "input", "op": "input"}, conv, {"id": "output", "op": "output"}],
              "edges": [["input", "c"], ["c", "output"]]}  # fmt: skip
    (workdir / "g.json").write_text(json.dumps(genome))
    assert main(["validate", "g.json"]) == 0
    assert "valid genome: 1 ops, 2 edges, hash " in capsys.readouterr().out


def test_a_latency_provider_onnxruntime_lacks_is_bad_input_where_latencies_are_timed(workdir, capsys, monkeypatch):
    import onnxruntime

    err = _bad_input(
        capsys, ["search", "--latency-provider", "NopeExecutionProvider"], "latency_provider 'NopeExecutionProvider'"
    )
    assert "is not available here (available: " in err and "CPUExecutionProvider" in err
    _nothing_written(workdir)
    config = cli._load_search_config(None, {"space": "nb201", "latency_provider": "NopeExecutionProvider"})
    assert config.space == "nb201"  # a space the predictor does not cut: no latency timed, the provider not looked at
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    config = cli._load_search_config(None, {"latency_provider": "CUDAExecutionProvider"})
    assert (config.space, config.latency_provider) == ("image", "CUDAExecutionProvider")
    _nothing_written(workdir)


def test_a_resume_checks_the_saved_latency_provider_here(workdir, capsys):
    (workdir / "out").mkdir()
    saved = {"search_id": "s", "mlflow_run_id": "r", "config": {"latency_provider": "NopeExecutionProvider"}}
    (workdir / "out" / "search.json").write_text(json.dumps(saved))
    _bad_input(capsys, ["search", "--resume", "out"], "latency_provider 'NopeExecutionProvider' is not available here")
    _nothing_written(workdir, {"out"})
    assert [p.name for p in (workdir / "out").iterdir()] == ["search.json"]


def test_help_lists_the_search_flags(capsys):
    assert main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--dataset",
        "--strategy",
        "--budget",
        "--epochs",
        "--population",
        "--workers",
        "--seed",
        "--output",
        "--config",
    ):
        assert flag in out


def test_eta_below_two_is_one_line(workdir, capsys):
    assert _bad_input(capsys, ["search", "--eta", "1"], "eta") == "error: eta: Input should be greater than or equal to 2"
    _nothing_written(workdir)


def test_bad_choice_is_one_line(workdir, capsys):
    err = _bad_input(capsys, ["search", "--runner", "nope"], "Invalid value for '--runner': 'nope' is not one of 'threads'")
    assert "Value error" not in err
    _nothing_written(workdir)


def test_flags_override_the_file_and_only_given_flags_count(workdir, capsys, monkeypatch):
    seen = {}

    def stop(config_file, overrides):
        seen.update(config_file=config_file, overrides=overrides)
        raise cli.UsageProblem("stopped before the search")

    monkeypatch.setattr(cli, "_load_search_config", stop)
    (workdir / "s.yaml").write_text("budget: 5\nseed: 4\nepochs: 3\n")
    _bad_input(capsys, ["search", "--config", "s.yaml", "--budget", "9", "--seed", "0", "--no-download"], "stopped")
    assert seen == {"config_file": Path("s.yaml"), "overrides": {"budget": 9, "seed": 0, "download": False}}
    config = load_config(seen["config_file"], seen["overrides"])
    assert (config.budget, config.seed, config.epochs, config.population) == (9, 0, 3, 8)  # flag, flag, file, default


def test_resume_takes_only_execution_flags(workdir, capsys):
    args = ["search", "--resume", "x", "--config", "s.yaml", "--budget", "3", "--workers", "2", "--device", "cpu"]
    err = _bad_input(capsys, args, "drop --config, --budget (only execution flags such as --workers apply)")
    assert "--device" not in err
    _nothing_written(workdir)
