"""`nas search`'s setting flags come from SearchConfig: names, types, defaults and help; MLproject uses the same names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from flows.cli import main
from flows.settings import SearchCommand, given_settings, option_name, setting_options
from nas_core.config import SETTING_GROUPS, SearchConfig, config_from
from tests.conftest import REPO_ROOT


def _given(args: list[str]) -> dict[str, Any]:
    """The settings a SearchCommand hands its function for ``args``."""
    app = typer.Typer(add_completion=False)
    seen: dict[str, Any] = {}

    @app.command(cls=SearchCommand)
    def command(ctx: typer.Context, quiet: bool = False) -> None:
        seen.update(given_settings(ctx), quiet=quiet)

    app(args, standalone_mode=False)
    return seen


def _help(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    assert main([*args, "--help"]) == 0
    return capsys.readouterr().out


def test_option_names():
    assert option_name("max_epochs") == "--max-epochs"
    assert option_name("budget") == "--budget"


def test_one_flag_per_setting_in_group_order():
    options = setting_options()
    assert [option.name for option in options] == [name for names in SETTING_GROUPS.values() for name in names]
    assert [option.opts for option in options] == [[option_name(option.name)] for option in options]
    assert {option.name: option.secondary_opts for option in options if option.secondary_opts} == {"download": ["--no-download"]}


def test_only_the_flags_given_are_settings():
    assert _given([]) == {"quiet": False}
    given = _given(["--budget", "3", "--seed", "0", "--no-download", "--runner", "dask", "--quiet"])
    assert given == {"budget": 3, "seed": 0, "download": False, "runner": "dask", "quiet": True}  # 0 and False count
    given = _given(["--output", "out", "--proxy-keep", "0.5", "--hparams", "{lr: [0.001, 0.01]}", "--download"])
    assert given == {"output": Path("out"), "proxy_keep": 0.5, "hparams": {"lr": [0.001, 0.01]}, "download": True, "quiet": False}
    config = config_from({k: v for k, v in given.items() if k != "quiet"})
    assert (config.output, config.proxy_keep, config.hparams, config.download) == (Path("out"), 0.5, {"lr": [0.001, 0.01]}, True)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--budget", "many"], "'--budget'"),
        (["--runner", "nope"], "'nope' is not one of 'threads', 'processes', 'dask'"),
        (["--hparams", "[1"], "is not valid YAML"),
        (["--download", "yes"], "unexpected extra argument"),
    ],
)
def test_flag_types_come_from_the_annotations(args, expected):
    with pytest.raises(Exception) as info:  # typer's (vendored) click usage errors
        _given(args)
    assert expected in info.value.format_message()


def test_search_help_shows_every_setting_with_its_description_and_default(capsys, monkeypatch):
    out = _help(capsys, monkeypatch, "search")
    lines = out.splitlines()
    for name, field in SearchConfig.model_fields.items():
        (line,) = [line for line in lines if re.match(rf"│ {option_name(name)}\s", line)]
        assert field.description[1:20] in line, name
    assert re.search(r"--budget\s.*Number of candidates to train \(1 to 100,000\)\. \[default: 20\]", out)  # range too
    assert re.search(r"--download\s+--no-download\s.*\[default: no-download\]", out)
    assert re.search(r"--runner\s+<threads\|processes\|dask>", out)
    for group in SETTING_GROUPS:
        assert f"─ {group} ─" in out
    for flag in ("--config", "--resume", "--quiet", "--fail-under", "--summary-md"):
        assert flag in out


def test_help_and_bad_settings_load_no_heavy_library():
    code = (
        "import sys; from flows.cli import main; code = main(sys.argv[1:]); "
        "print(code, sorted({'torch', 'numpy', 'mlflow', 'prefect', 'pydantic'} & set(sys.modules)), file=sys.stderr)"
    )
    loaded = {}
    for args in (["--help"], ["search", "--help"], ["search", "--eta", "1"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO_ROOT)
        loaded[" ".join(args)] = proc.stderr.strip().splitlines()[-1]
    assert loaded["--help"] == "0 []"  # the setting flags are built only for `nas search`
    assert loaded["search --help"] == "0 ['pydantic']"
    assert loaded["search --eta 1"] == "2 ['pydantic']"


def test_mlproject_parameters_are_settings_and_its_flags_exist(capsys, monkeypatch):
    spec = yaml.safe_load((REPO_ROOT / "MLproject").read_text())
    searches = 0
    for name, entry in spec["entry_points"].items():
        command = entry["command"].split()
        assert command[0] == "nas", name
        flags = set(re.findall(r"--[a-z][a-z0-9-]*", _help(capsys, monkeypatch, command[1])))
        assert [f for f in command if f.startswith("--") and f not in flags] == [], name
        if command[1] == "search":
            searches += 1
            assert set(entry["parameters"]) <= set(SearchConfig.model_fields), name
            for parameter in entry["parameters"]:  # -P budget=4 is --budget 4
                assert f"{option_name(parameter)} {{{parameter}}}" in entry["command"], (name, parameter)
    assert searches == 2  # `search` and `main`
