"""Search configuration: defaults, then a YAML file, then flags; invalid input is one clear ConfigError line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nas_core.config import (
    EXECUTION_SETTINGS,
    SETTING_GROUPS,
    ConfigError,
    SearchConfig,
    config_from,
    default_text,
    default_workers,
    load_config,
    settings_table_markdown,
    with_default_workers,
)


def write(tmp_path: Path, text: str, name: str = "search.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path | None = None, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert message
    assert "\n" not in message and "\r" not in message
    return message


# ---- layering -----------------------------------------------------------------------------


def test_defaults():
    config = load_config()
    assert config.dataset == "digits"
    assert config.strategy == "evolution"
    assert config.space == "image"
    assert config.budget == 20
    assert config.epochs == 12
    assert config.population == 8
    assert config.workers == default_workers() >= 1
    assert config.seed == 0
    assert config.output is None
    assert config.project_dir == Path(".")
    assert config.experiment is None
    assert config.experiment_name == "nas-digits"
    assert (config.batch_size, config.optimizer, config.lr, config.weight_decay) == (64, "adamw", 0.005, 1e-4)
    assert config.candidate_timeout is None
    assert (config.min_nodes, config.max_nodes) == (2, 6)
    assert config.init_genome is None


def test_yaml_file_values_are_used(tmp_path):
    path = write(
        tmp_path,
        "budget: 5\nepochs: 3\nstrategy: random\nlr: 0.01\noutput: runs/one\nexperiment: mine\ncandidate_timeout: 30\n",
    )
    config = load_config(path)
    assert config.budget == 5
    assert config.epochs == 3
    assert config.strategy == "random"
    assert config.lr == 0.01
    assert config.output == Path("runs/one")
    assert config.experiment_name == "mine"
    assert config.candidate_timeout == 30.0
    assert config.population == 8  # untouched keys keep their defaults


def test_flags_beat_the_file(tmp_path):
    path = write(tmp_path, "budget: 5\nepochs: 3\nseed: 4\n")
    config = load_config(path, {"budget": 9, "seed": 0})
    assert config.budget == 9
    assert config.seed == 0  # a falsy but not-None flag still wins
    assert config.epochs == 3


def test_none_overrides_are_ignored(tmp_path):
    path = write(tmp_path, "budget: 5\nstrategy: random\n")
    config = load_config(path, {"budget": None, "strategy": None, "epochs": None})
    assert (config.budget, config.strategy, config.epochs) == (5, "random", 12)
    assert load_config(None, {"budget": None}).budget == 20


@pytest.mark.parametrize("text", ["", "~\n", "# only a comment\n"])
def test_empty_yaml_file_gives_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == load_config()


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(ValueError):
        config.budget = 3
    assert isinstance(config, SearchConfig)


# ---- errors ----------------------------------------------------------------------------------


def test_unknown_key_in_file_is_named(tmp_path):
    message = config_error(write(tmp_path, "budget: 5\nbugdet: 6\n"))
    assert "bugdet" in message
    assert "budget" in message  # the known settings are listed


def test_unknown_override_is_named():
    assert "colour" in config_error(None, {"colour": "red"})


def test_malformed_yaml(tmp_path):
    path = write(tmp_path, "budget: [1, 2\nepochs: 3\n")
    message = config_error(path)
    assert "YAML" in message
    assert str(path) in message


@pytest.mark.parametrize("text", ["- budget\n- 5\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping(tmp_path, text):
    assert "mapping" in config_error(write(tmp_path, text))


def test_budget_zero(tmp_path):
    assert "budget" in config_error(write(tmp_path, "budget: 0\n"))
    assert "budget" in config_error(None, {"budget": 0})


def test_unknown_dataset():
    message = config_error(None, {"dataset": "imagenet"})
    assert "imagenet" in message
    assert "digits" in message  # says what is available


def test_unknown_strategy(tmp_path):
    message = config_error(write(tmp_path, "strategy: annealing\n"))
    assert "annealing" in message
    assert "evolution" in message


def test_min_nodes_above_max_nodes(tmp_path):
    message = config_error(write(tmp_path, "min_nodes: 5\n"), {"max_nodes": 3})
    assert "min_nodes" in message and "max_nodes" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert str(path) in message


def test_directory_instead_of_file(tmp_path):
    assert str(tmp_path) in config_error(tmp_path)


@pytest.mark.parametrize("overrides", [{"lr": 0}, {"epochs": 0}, {"workers": 0}, {"optimizer": "rmsprop"}, {"budget": 2.5}])
def test_other_invalid_values_name_the_setting(overrides):
    (key,) = overrides
    assert key in config_error(None, overrides)


def test_non_string_key_is_an_unknown_setting(tmp_path):
    assert "1" in config_error(write(tmp_path, "1: 2\n"))


def test_file_that_is_not_utf8_is_unreadable(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"experiment: caf\xe9\n")
    assert str(path) in config_error(path)


# ---- one source of truth: every setting declared once, with its description -----------------


def test_every_setting_has_a_description():
    missing = [name for name, field in SearchConfig.model_fields.items() if not (field.description or "").strip()]
    assert missing == []


def test_setting_groups_hold_every_setting_once():
    grouped = [name for names in SETTING_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(SearchConfig.model_fields)
    assert set(EXECUTION_SETTINGS) <= set(SearchConfig.model_fields)


def test_descriptions_name_every_choice():
    from typing import Literal, get_args, get_origin

    from nas_core.data.preparation import SOURCES  # with every source registered
    from nas_core.spaces import SPACES
    from nas_core.strategies import STRATEGIES

    fields = SearchConfig.model_fields
    registries = {"strategy": STRATEGIES, "space": SPACES, "dataset": SOURCES}
    for name, registry in registries.items():
        assert [k for k in registry if k not in fields[name].description] == [], name
    for name, field in fields.items():
        if get_origin(field.annotation) is Literal:
            assert [c for c in get_args(field.annotation) if c not in field.description] == [], name


def test_default_text():
    assert (default_text("budget"), default_text("download"), default_text("project_dir")) == ("20", "false", ".")
    assert (default_text("weight_decay"), default_text("final_splits")) == ("0.0001", "train+val")
    assert default_text("workers") is None  # computed per machine: the description says how
    assert default_text("output") is None


def test_settings_table_has_a_row_per_setting_in_group_order():
    lines = settings_table_markdown().splitlines()
    assert lines[0] == "| Setting | Default | Description |"
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines[2:]]
    assert all(len(row) == 3 for row in rows)
    assert [row[0].strip().strip("`") for row in rows] == [n for names in SETTING_GROUPS.values() for n in names]
    assert rows[[row[0].strip() for row in rows].index("`budget`")][1].strip() == "`20`"


def test_config_from_names_the_bad_setting():
    assert config_from({"budget": 3}).budget == 3
    with pytest.raises(ConfigError, match=r"^eta: Input should be greater than or equal to 2$"):
        config_from({"eta": 1})


def test_default_workers_on_gpus_is_one_per_gpu_slot(monkeypatch):
    from nas_core.evaluation import devices

    assert with_default_workers(load_config(None, {"device": "cpu"})).workers == default_workers()
    monkeypatch.setattr(devices, "trains_on_gpus", lambda device, remote_cluster=False: not remote_cluster)
    monkeypatch.setattr(devices, "visible_devices", lambda device="auto": ["cuda:0", "cuda:1"])
    assert with_default_workers(load_config(None, {"candidates_per_gpu": 3})).workers == 6
    assert with_default_workers(load_config(None, {"workers": 5})).workers == 5  # given: kept
    remote = load_config(None, {"runner": "dask", "dask_address": "tcp://10.0.0.1:8786"})
    assert with_default_workers(remote).workers == default_workers()  # a remote cluster's GPUs are not counted here

    def no_gpu(device, remote_cluster=False):
        raise devices.DeviceError("no GPU 'cuda:7' (2 visible)")

    monkeypatch.setattr(devices, "trains_on_gpus", no_gpu)
    with pytest.raises(ConfigError, match="no GPU 'cuda:7'"):
        with_default_workers(load_config(None, {"device": "cuda:7"}))


def test_importing_the_config_loads_no_heavy_library():
    code = "import sys, nas_core.config; print(sorted({'torch', 'numpy', 'mlflow', 'prefect'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"budget": True}, "budget: must be a whole number, got True"),
        ({"budget": "5"}, "budget: must be a whole number, got '5'"),
        ({"epochs": 2.5}, "epochs: must be a whole number"),
        ({"lr": float("inf")}, "lr: must be a finite number"),
        ({"lr": float("nan")}, "lr: must be a finite number"),
        ({"candidate_timeout": float("inf")}, "candidate_timeout: must be a finite number"),
        ({"lr": True}, "lr: must be a number"),
        ({"download": 1}, "download: must be true or false"),
        ({"download": "yes"}, "download: must be true or false"),
        ({"budget": 10**12}, "budget: Input should be less than or equal to 100000"),
        ({"max_nodes": 10**12}, "max_nodes: Input should be less than or equal to 256"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ],
)
def test_numbers_and_switches_are_strict_finite_and_bounded(values, fragment):
    from nas_core.config import ConfigError, config_from

    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config_from(values)


def test_plain_numbers_still_pass():
    from nas_core.config import config_from

    config = config_from({"budget": 5, "lr": 1, "candidate_timeout": 60, "download": True, "seed": 2**32 - 1})
    assert (config.budget, config.lr, config.candidate_timeout, config.download) == (5, 1, 60, True)


def test_a_yaml_tag_is_refused_by_name(tmp_path):
    from nas_core.config import ConfigError, load_config

    path = tmp_path / "tag.yaml"
    path.write_text("budget: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="has a YAML tag that is not allowed at line 1"):
        load_config(path)


def test_ranges_appear_in_the_settings_table():
    from nas_core.config import range_text, settings_table_markdown

    assert range_text("budget") == "1 to 100,000"
    assert range_text("lr") == "above 0, at most 10"
    assert range_text("dataset") is None
    assert "number of candidates to train (1 to 100,000)" in settings_table_markdown()
