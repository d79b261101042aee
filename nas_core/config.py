"""The search configuration: defaults, a YAML file, then command-line flags, validated by pydantic."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nas_core.data import check_dataset_name, dataset_folder
from nas_core.hparams import check_choices
from nas_core.spaces import SPACES
from nas_core.strategies import STRATEGIES


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and how to fix it."""


def default_workers() -> int:
    """Parallel candidates: one per core, at most 8 (small models gain more from parallel candidates than threads)."""
    return max(1, min(os.cpu_count() or 1, 8))


class SearchConfig(BaseModel):
    """Everything a search needs. Every key can be set in the YAML file given to ``--config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("digits", description="dataset: digits, mnist, fashion-mnist, cifar10, imagefolder:PATH or npz:PATH")
    data_root: Path | None = Field(None, description="folder with torchvision's files for mnist, fashion-mnist, cifar10")
    download: bool = Field(False, description="download mnist, fashion-mnist or cifar10 into data_root when missing")
    strategy: str = Field("evolution", description="search strategy")
    space: str = Field("image", description="search space")
    budget: int = Field(20, ge=1, description="number of candidates to train")
    epochs: int = Field(12, ge=1, description="training epochs per candidate")
    population: int = Field(8, ge=1, description="candidates per generation (and evolution's population)")
    workers: int = Field(default_factory=default_workers, ge=1, description="candidates trained in parallel")
    runner: Literal["threads", "processes", "dask"] = Field(
        "threads", description="where candidates train: threads or processes of this machine, or a Dask cluster"
    )
    dask_address: str | None = Field(None, description="scheduler address of an existing Dask cluster (runner dask)")
    device: str = Field("auto", description="'auto' (GPUs when visible), 'cpu', 'cuda' or visible GPU indices like '0,1'")
    candidates_per_gpu: int = Field(1, ge=1, description="candidates sharing one GPU at once")
    seed: int = Field(0, description="seed for proposals and training")
    output: Path | None = Field(None, description="output folder (default: outputs/<search id>)")
    project_dir: Path = Field(Path("."), description="project folder holding data.dvc, data/ and mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment (default: nas-<dataset>)")
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(0.005, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    candidate_timeout: float | None = Field(None, gt=0, description="seconds before a candidate is stopped")
    min_nodes: int = Field(2, ge=1, description="fewest ops in a genome")
    max_nodes: int = Field(6, ge=1, description="most ops in a genome")
    init_genome: Path | None = Field(None, description="genome JSON file to evaluate first")
    evaluator: str = Field("train", description="'train' (real training) or 'table:PATH' (a tabular benchmark)")
    select_metric: str = Field("val_acc_200", description="table column used to select (table evaluator)")
    report_metric: str = Field("test_acc_200", description="table column reported, never used to select")
    max_params: int | None = Field(None, ge=1, description="only propose architectures with at most this many parameters")
    max_flops: int | None = Field(None, ge=1, description="only propose architectures with at most this many FLOPs")
    hparams: dict[str, list[Any]] | None = Field(
        None, description="training hyperparameters searched with the architecture, e.g. {lr: [0.001, 0.01]}"
    )
    augment: Literal["none", "shift", "shift-flip"] = Field(
        "none", description="augmentation on the training device: none, shift (1 pixel) or shift-flip (images only)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training precision: auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16"
    )
    fidelity: Literal["none", "epochs"] = Field(
        "none", description="'epochs': multi-fidelity search (successive halving over epochs); 'none': all get `epochs`"
    )
    min_epochs: int = Field(2, ge=1, description="multi-fidelity: epochs of the first rung")
    max_epochs: int | None = Field(None, ge=1, description="multi-fidelity: epochs of the last rung (default: epochs)")
    eta: int = Field(3, ge=2, description="multi-fidelity: keep the best 1/eta of a rung, give them eta times the epochs")
    schedule: Literal["halving", "hyperband"] = Field(
        "halving", description="multi-fidelity: successive halving, or hyperband (brackets starting at every rung)"
    )
    proxy: Literal["none", "synflow", "naswot"] = Field(
        "none", description="zero-cost proxy scored on every proposal at initialisation (logged on its run)"
    )
    proxy_keep: float = Field(
        1.0, gt=0, le=1, description="share of proposals trained: the best by the proxy (1: train all, log the score)"
    )
    early_stop: Literal["none", "median"] = Field(
        "none",
        description="learning-curve early stopping: 'median' stops a candidate whose best validation accuracy after "
        "an epoch is below the median of earlier candidates at that epoch (from a quarter of the epochs on)",
    )
    final_epochs: int = Field(
        0, ge=0, description="retrain the best for this many epochs before export (0: export the best as trained)"
    )
    final_splits: Literal["train+val", "train"] = Field("train+val", description="what the final training trains on")

    @field_validator("hparams")
    @classmethod
    def _valid_hparams(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if value:
            check_choices(value)
        return value

    @field_validator("evaluator")
    @classmethod
    def _known_evaluator(cls, value: str) -> str:
        if value != "train" and not (value.startswith("table:") and len(value) > len("table:")):
            raise ValueError(f"unknown evaluator '{value}'; use 'train' or 'table:PATH'")
        return value

    @property
    def table_path(self) -> Path | None:
        """The table file of a ``table:PATH`` evaluator."""
        return Path(self.evaluator.removeprefix("table:")) if self.evaluator.startswith("table:") else None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        check_dataset_name(value)
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return _known("strategy", value, STRATEGIES)

    @field_validator("space")
    @classmethod
    def _known_space(cls, value: str) -> str:
        return _known("space", value, SPACES)

    @property
    def top_epochs(self) -> int:
        """The longest training a candidate gets (``max_epochs`` in a multi-fidelity search, else ``epochs``)."""
        return (self.max_epochs or self.epochs) if self.fidelity == "epochs" else self.epochs

    @property
    def experiment_name(self) -> str:
        default = f"nas-{self.table_path.stem}" if self.table_path else f"nas-{dataset_folder(self.dataset)}"
        return self.experiment or default


EXECUTION_SETTINGS = ("workers", "runner", "dask_address", "device", "candidates_per_gpu", "candidate_timeout")
"""Settings that say how a search runs, not what it searches: the only ones a resume may change."""


def _known(kind: str, value: str, registry: dict[str, Any]) -> str:
    if value not in registry:
        raise ValueError(f"unknown {kind} '{value}'; choose one of: {', '.join(sorted(registry))}")
    return value


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, SearchConfig.model_fields, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known settings: {', '.join(SearchConfig.model_fields)}"
        return f"unknown setting '{where}' ({hint})"
    return f"{where}: {message}"


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (flags; None values are ignored)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read config file {path}: it is not UTF-8 text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping of settings, e.g. 'budget: 20'")
        bad_keys = [k for k in (loaded or {}) if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError(f"config file {path}: setting names must be text, got {bad_keys[0]!r}")
        values.update(loaded or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = SearchConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    if config.table_path is not None and not hasattr(SPACES[config.space](), "arch_string"):
        raise ConfigError("the table evaluator needs a space whose genomes are table keys; add --space nb201")
    if config.dask_address and config.runner != "dask":
        raise ConfigError("dask_address needs runner 'dask' (add --runner dask)")
    if config.min_nodes > config.max_nodes:
        raise ConfigError(f"min_nodes ({config.min_nodes}) must not exceed max_nodes ({config.max_nodes})")
    if config.fidelity == "epochs" and config.min_epochs > config.top_epochs:
        raise ConfigError(f"min_epochs ({config.min_epochs}) must not exceed max_epochs ({config.top_epochs})")
    looked_up = config.fidelity != "none" or config.proxy != "none" or config.final_epochs or config.early_stop != "none"
    if config.table_path is not None and looked_up:
        raise ConfigError("the table evaluator looks results up: drop --fidelity, --proxy, --early-stop and --final-epochs")
    if config.proxy == "none" and config.proxy_keep < 1:
        raise ConfigError("proxy_keep needs a proxy to rank proposals by (add --proxy naswot or --proxy synflow)")
    return config
