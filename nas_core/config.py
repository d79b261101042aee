"""The search configuration: defaults, a YAML file, then command-line flags, validated by pydantic.

``SearchConfig`` is the one place a setting is declared: its field name is the YAML key, the Prefect and MLflow
parameter name and (with dashes) the ``nas search`` flag; its default and description are what ``nas search
--help`` and the docs show. The registries (datasets, spaces, strategies) are imported only when a value is
checked, so that importing this module stays cheap for the command line.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from nas_core.hparams import check_choices
from nas_core.limits import MAX_OPS


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and how to fix it."""


# Upper bounds of numeric settings: far above any sensible search, they catch typos and absurd sizes early.
MAX_COUNT = 100_000  # budget, population
MAX_EPOCHS = 10_000
MAX_WORKERS = 1024
MAX_SECONDS = 30 * 24 * 3600  # candidate_timeout: 30 days
MAX_COST = 10**15  # max_params, max_flops
COST_LIMITS = {"latency_ms": "max_latency_ms", "params": "max_params", "flops": "max_flops"}  # objective -> its limit
OBJECTIVES = ("val_accuracy", *COST_LIMITS)
MAX_PER_GPU = 64  # candidates_per_gpu
AUTO_MAX_PER_GPU = 8  # candidates_per_gpu auto: at most this many candidates share a GPU


def default_workers() -> int:
    """Parallel candidates: one per core, at most 8 (small models gain more from parallel candidates than threads)."""
    return max(1, min(os.cpu_count() or 1, 8))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600}
_SEARCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_duration(value: Any) -> float:
    """Seconds of a duration written ``90s``, ``30m``, ``2h`` or as a number of seconds (above 0, at most 30 days)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be a duration like 90s, 30m or 2h, got {value!r}")
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if isinstance(value, str) and match is None:
        raise ValueError(f"'{value}' is not a duration; write it like 90s, 30m or 2h")
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]] if match else float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_SECONDS:
        raise ValueError(f"must be above 0 and at most 30 days, got {value!r}")
    return seconds


WARM_START_MODES = ("none", "reuse", "auto")


def warm_start_searches(mode: str) -> tuple[str, ...] | None:
    """The search ids a ``warm_start`` value names; None for a mode (none, reuse, auto). A ValueError for a bad value."""
    text = mode.strip()
    if text in WARM_START_MODES:
        return None
    ids = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    bad = next((i for i in ids if not _SEARCH_ID.match(i) or i in WARM_START_MODES), None)
    if not ids or bad is not None:
        raise ValueError(f"must be none, reuse, auto or search ids separated by commas, got {mode!r}")
    return ids


class SearchConfig(BaseModel):
    """Everything a search needs. Every key can be set in the YAML file given to ``--config``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field("digits", description="dataset: digits, mnist, fashion-mnist, cifar10, imagefolder:PATH or npz:PATH")
    data_root: Path | None = Field(
        None,
        description="folder with torchvision's files (MNIST/raw/..., cifar-10-batches-py/...) for mnist, fashion-mnist, cifar10",
    )
    download: bool = Field(False, description="download mnist, fashion-mnist or cifar10 into data_root when missing")
    strategy: str = Field("evolution", description="search strategy: random, evolution, genetic, local, nsga2 or bo")
    space: str = Field(
        "image", description="search space: image, nb201 or sequence (when not set: image, or sequence for N x C x L data)"
    )
    budget: int = Field(20, ge=1, le=MAX_COUNT, description="number of candidates to train")
    time_budget: str | None = Field(
        None,
        description="stop proposing candidates once the next ones would not finish within this time since the search "
        "started: 90s, 30m, 2h or seconds (with budget: whichever comes first); candidates running then finish",
    )
    epochs: int = Field(12, ge=1, le=MAX_EPOCHS, description="training epochs per candidate")
    population: int = Field(8, ge=1, le=MAX_COUNT, description="candidates per generation (and evolution's population)")
    workers: int = Field(
        default_factory=default_workers,
        ge=1,
        le=MAX_WORKERS,
        description="candidates trained in parallel (default: one per core, at most 8; on GPUs one per GPU slot, "
        "GPUs x candidates_per_gpu)",
    )
    runner: Literal["threads", "processes", "dask"] = Field(
        "threads", description="where candidates train: threads or processes of this machine, or dask (a Dask cluster)"
    )
    dask_address: str | None = Field(
        None, description="scheduler address of an existing Dask cluster (runner dask; when not set: a local cluster)"
    )
    device: str = Field("auto", description="'auto' (GPUs when visible), 'cpu', 'cuda' or visible GPU indices like '0,1'")
    candidates_per_gpu: int | Literal["auto"] = Field(
        1,
        description="candidates sharing one GPU at once (1 to 64), or auto: 1, doubled after each generation (up to 8) "
        "while the GPUs' measured utilisation keeps rising",
    )
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seed for proposals and training (same settings and seed: same proposals)"
    )
    output: Path | None = Field(None, description="output folder (default: outputs/<search id>)")
    project_dir: Path = Field(Path("."), description="project folder holding data.dvc, data/ and mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment (default: nas-<dataset>)")
    batch_size: int = Field(64, ge=1, le=65536, description="training batch size")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adamw", description="training optimizer: adam, adamw or sgd")
    lr: float = Field(0.005, gt=0, le=10, description="learning rate (at the start of a cosine schedule)")
    weight_decay: float = Field(1e-4, ge=0, le=10, description="weight decay of the optimizer")
    candidate_timeout: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS,
        description="seconds before a candidate is stopped and recorded as failed (when not set: no limit)",
    )
    tracking_timeout: float = Field(
        300,
        gt=0,
        le=MAX_SECONDS,
        description="seconds the search waits for an unreachable or busy MLflow store before it stops (resumably, exit 1)",
    )
    min_nodes: int = Field(2, ge=1, le=MAX_OPS, description="fewest ops in a genome")
    max_nodes: int = Field(6, ge=1, le=MAX_OPS, description="most ops in a genome")
    init_genome: Path | None = Field(None, description="genome JSON file to evaluate first")
    evaluator: str = Field("train", description="'train' (real training) or 'table:PATH' (a tabular benchmark)")
    select_metric: str = Field("val_acc_200", description="table column used to select (table evaluator)")
    report_metric: str = Field("test_acc_200", description="table column reported, never used to select")
    max_params: int | None = Field(
        None,
        ge=1,
        le=MAX_COST,
        description="only propose architectures with at most this many parameters (every strategy honours it)",
    )
    max_flops: int | None = Field(
        None, ge=1, le=MAX_COST, description="only propose architectures with at most this many FLOPs (every strategy honours it)"
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        le=MAX_SECONDS * 1000,
        description="only propose architectures whose predicted onnxruntime latency (this machine, latency_threads, "
        "latency_batch) is at most this many milliseconds (every strategy honours it; image and sequence spaces)",
    )
    objectives: str = Field(
        "val_accuracy",
        description="val_accuracy, or val_accuracy and one cost to minimise (latency_ms, params or flops), comma-separated: "
        "nsga2 trades the two off; the other strategies keep to the cost's limit (max_latency_ms, max_params, max_flops)",
    )
    latency_batch: int = Field(1, ge=1, le=65536, description="batch size latencies are predicted, logged and limited at")
    latency_threads: int = Field(
        1, ge=1, le=MAX_WORKERS, description="onnxruntime intra-op threads latencies are timed with (pinned, one inter-op)"
    )
    latency_provider: str = Field(
        "CPUExecutionProvider",
        description="onnxruntime execution provider latencies are predicted and measured on (CPUExecutionProvider, "
        "CUDAExecutionProvider, ...); it must be one onnxruntime lists on the machine that searches",
    )
    hparams: dict[str, list[Any]] | None = Field(
        None, description="training hyperparameters searched with the architecture: a YAML mapping such as {lr: [0.001, 0.01]}"
    )
    augment: Literal["none", "shift", "shift-flip"] = Field(
        "none", description="augmentation on the training device: none, shift (1 pixel) or shift-flip (images only)"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="training precision: auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16"
    )
    fidelity: Literal["none", "epochs"] = Field(
        "none",
        description="'epochs': multi-fidelity search: many candidates get min_epochs, the best 1/eta of a rung are promoted "
        "to eta times the epochs (continuing from their checkpoint) up to max_epochs; 'none': all get epochs",
    )
    min_epochs: int = Field(2, ge=1, le=MAX_EPOCHS, description="multi-fidelity: epochs of the first rung")
    max_epochs: int | None = Field(
        None, ge=1, le=MAX_EPOCHS, description="multi-fidelity: epochs of the last rung (default: epochs)"
    )
    eta: int = Field(3, ge=2, le=100, description="multi-fidelity: keep the best 1/eta of a rung, give them eta times the epochs")
    schedule: Literal["halving", "hyperband"] = Field(
        "halving", description="multi-fidelity: successive halving, or hyperband (brackets starting at every rung)"
    )
    proxy: Literal["none", "synflow", "naswot"] = Field(
        "none",
        description="zero-cost proxy scored on every proposal at initialisation: none, synflow or naswot (logged on its run)",
    )
    proxy_keep: float = Field(
        1.0, gt=0, le=1, description="share of proposals trained: the best by the proxy (1: train all, log the score)"
    )
    prior: Literal["none", "synflow", "naswot"] = Field(
        "none",
        description="none, or a zero-cost proxy (synflow or naswot) scored before the search on every architecture of "
        "a listable space (nb201), or on a seeded pool of 256 of a larger one, cached in project_dir/proxies/; the "
        "strategy starts from the best-scored ones (bo also models the scores)",
    )
    early_stop: Literal["none", "median"] = Field(
        "none",
        description="learning-curve early stopping: none, or 'median': stop a candidate whose best validation accuracy after "
        "an epoch is below the median of earlier candidates at that epoch (from a quarter of the epochs on)",
    )
    final_epochs: int = Field(
        0,
        ge=0,
        le=MAX_EPOCHS,
        description="retrain the best for this many epochs (on final_splits) before export (0: export it as trained)",
    )
    final_splits: Literal["train+val", "train"] = Field(
        "train+val", description="what the final training trains on: train+val or train"
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="none, or int8: also hand over an int8 model (static post-training quantization with onnxruntime, "
        "calibrated on the train split), kept only within max_accuracy_drop of the float model's test accuracy",
    )
    max_accuracy_drop: float = Field(
        0.005, ge=0, le=1, description="quantize: the most test accuracy the int8 model may lose (0.005: half a point)"
    )
    export: Literal["best", "pareto"] = Field(
        "best",
        description="best: hand over the best model; pareto: also the models on the final accuracy/latency front (up "
        "to pareto_limit), each exported, checked, registered (aliases fastest and under_<X>ms) with its own bundle",
    )
    pareto_limit: int = Field(
        5, ge=2, le=50, description="export pareto: the most models handed over from the front, the best included"
    )
    export_latency_ms: tuple[float, ...] = Field(
        (),
        description="export pareto: latency targets in milliseconds, comma-separated (e.g. 2,5): the most accurate "
        "exported model measured under each gets the alias under_<X>ms",
    )
    warm_start: str = Field(
        "none",
        description="what the search remembers from earlier searches of its experiment: none; reuse (a candidate "
        "evaluated exactly so before is reused, not trained); auto (reuse, and the strategy is first told every earlier "
        "evaluation with the same space, evaluator, data version and training); or search ids, comma-separated "
        "(reuse, and told those searches' evaluations)",
    )
    seed_genomes: int = Field(
        0,
        ge=0,
        le=MAX_COUNT,
        description="start from the best N architectures of the warm-start searches, retrained (any data version)",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _plain_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        """Numbers and switches as written: no true for 1, no '5' or 5.0 for 5, no infinity or NaN."""
        kind = _scalar_kind(cls.model_fields[info.field_name].annotation)
        if value is None or kind is None:
            return value
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"must be a whole number, got {value!r}")
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"must be a finite number, got {value!r}")
        return value

    @field_validator("candidates_per_gpu", mode="before")
    @classmethod
    def _per_gpu(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PER_GPU:
            raise ValueError(f"must be a whole number from 1 to {MAX_PER_GPU}, or auto; got {value!r}")
        return value

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if value is None:
            return None
        seconds = parse_duration(value)  # a ValueError says what is wrong
        return value if isinstance(value, str) else f"{seconds:g}s"

    @field_validator("export_latency_ms", mode="before")
    @classmethod
    def _latency_targets(cls, value: Any) -> Any:
        """``2``, ``"2,5"`` or ``[2, 5]``: positive milliseconds, ascending, each once."""
        if value is None:
            return ()
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
        try:
            targets = sorted({float(item) for item in items if str(item).strip()})
        except (TypeError, ValueError):
            raise ValueError(f"must be milliseconds, comma-separated (e.g. 2,5), got {value!r}") from None
        if any(not math.isfinite(t) or t <= 0 for t in targets):
            raise ValueError(f"must be positive milliseconds, got {value!r}")
        return tuple(targets)

    @field_validator("warm_start")
    @classmethod
    def _warm_start_mode(cls, value: str) -> str:
        return ",".join(warm_start_searches(value) or ()) or value.strip()

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: str) -> str:
        names = [v.strip() for v in value.split(",")]
        unknown = [n for n in names if n not in OBJECTIVES]
        if unknown:
            raise ValueError(f"unknown objective '{unknown[0]}'; choose from: {', '.join(OBJECTIVES)}")
        if names[0] != "val_accuracy" or len(names) > 2 or len(set(names)) != len(names):
            raise ValueError(f"must be val_accuracy, optionally followed by one of {', '.join(COST_LIMITS)}; got {value!r}")
        return ",".join(names)

    @property
    def cost_objective(self) -> str | None:
        """The cost ``objectives`` minimises beside validation accuracy (None: accuracy only)."""
        names = self.objectives.split(",")
        return names[1] if len(names) > 1 else None

    @model_validator(mode="after")
    def _cost_objective_needs_a_way(self) -> SearchConfig:
        from nas_core.latency import LATENCY_SPACES

        cost = self.cost_objective
        limit = COST_LIMITS.get(cost or "")
        wants_latency = self.max_latency_ms is not None or cost == "latency_ms"
        if wants_latency and self.space not in LATENCY_SPACES:
            raise ValueError(f"latency is predicted for the {' and '.join(LATENCY_SPACES)} spaces, not '{self.space}'")
        if wants_latency and self.table_path is not None:
            raise ValueError("the table evaluator trains nothing to time: drop --max-latency-ms and latency_ms")
        if self.export == "pareto" and (self.space not in LATENCY_SPACES or self.table_path is not None):
            raise ValueError(f"export pareto needs latency: the {' and '.join(LATENCY_SPACES)} spaces, trained (not a table)")
        if self.export_latency_ms and self.export != "pareto":
            raise ValueError("export_latency_ms names tiers of the exported front: add --export pareto")
        if cost and self.strategy != "nsga2" and getattr(self, limit) is None:
            raise ValueError(
                f"objective {cost} with strategy {self.strategy} needs its limit --{limit.replace('_', '-')} "
                "(only nsga2 trades accuracy off against a cost)"
            )
        return self

    @model_validator(mode="after")
    def _seeds_need_searches(self) -> SearchConfig:
        if self.seed_genomes and self.warm_start in ("none", "reuse"):
            raise ValueError("seed_genomes needs warm_start auto or search ids: it says which searches to seed from")
        return self

    @property
    def time_budget_seconds(self) -> float | None:
        """``time_budget`` in seconds (None: no time limit)."""
        return parse_duration(self.time_budget) if self.time_budget is not None else None

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
        from nas_core.data.preparation import check_dataset_name

        check_dataset_name(value)
        return value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from nas_core.strategies import STRATEGIES

        return _known("strategy", value, STRATEGIES)

    @field_validator("space")
    @classmethod
    def _known_space(cls, value: str) -> str:
        from nas_core.spaces import SPACES

        return _known("space", value, SPACES)

    @property
    def max_candidates_per_gpu(self) -> int:
        """The most candidates a GPU holds at once (``auto``: up to 8)."""
        return AUTO_MAX_PER_GPU if self.candidates_per_gpu == "auto" else self.candidates_per_gpu

    @property
    def top_epochs(self) -> int:
        """The longest training a candidate gets (``max_epochs`` in a multi-fidelity search, else ``epochs``)."""
        return (self.max_epochs or self.epochs) if self.fidelity == "epochs" else self.epochs

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment: ``experiment``, else ``nas-<dataset folder>`` (``nas-<table name>`` for a table)."""
        from nas_core.data.preparation import dataset_folder

        default = f"nas-{self.table_path.stem}" if self.table_path else f"nas-{dataset_folder(self.dataset)}"
        return self.experiment or default


SETTING_GROUPS: dict[str, tuple[str, ...]] = {
    "Data": ("dataset", "data_root", "download"),
    "Search": ("strategy", "space", "budget", "time_budget", "population", "seed", "init_genome", "min_nodes",
               "max_nodes", "max_params", "max_flops", "max_latency_ms", "objectives", "latency_batch", "latency_threads",
               "latency_provider"),
    "Training": ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "hparams", "augment", "precision"),
    "Fast evaluation": ("fidelity", "min_epochs", "max_epochs", "eta", "schedule", "proxy", "proxy_keep", "prior",
                        "early_stop"),
    "Tabular benchmark": ("evaluator", "select_metric", "report_metric"),
    "Final model": ("final_epochs", "final_splits", "quantize", "max_accuracy_drop", "export", "pareto_limit",
                    "export_latency_ms"),
    "Memory": ("warm_start", "seed_genomes"),
    "Execution": ("workers", "runner", "dask_address", "device", "candidates_per_gpu", "candidate_timeout",
                  "tracking_timeout"),
    "Output and tracking": ("output", "project_dir", "experiment"),
}  # fmt: skip
"""Every setting once, by topic, in the order ``nas search --help`` and the settings table show them."""

EXECUTION_SETTINGS = SETTING_GROUPS["Execution"]
"""Settings that say how a search runs, not what it searches: the only ones a resume may change."""


def default_text(name: str) -> str | None:
    """The default of setting ``name`` as help and docs show it (YAML spelling); None when its description says."""
    field = SearchConfig.model_fields[name]
    if field.default_factory is not None or field.default is None:
        return None
    if isinstance(field.default, bool):
        return "true" if field.default else "false"
    return str(field.default)


def range_text(name: str) -> str | None:
    """The allowed range of numeric setting ``name`` from its bounds, e.g. ``1 to 100,000``; None when unbounded."""
    bounds = {type(m).__name__: getattr(m, attr) for m in SearchConfig.model_fields[name].metadata
              for attr in ("ge", "gt", "le", "lt") if hasattr(m, attr)}  # fmt: skip
    high = f"{bounds['Le']:,}" if "Le" in bounds else None
    if "Gt" in bounds:
        return f"above {bounds['Gt']:,}" + (f", at most {high}" if high else "")
    if "Ge" in bounds:
        return f"{bounds['Ge']:,} to {high}" if high else f"at least {bounds['Ge']:,}"
    return f"at most {high}" if high else None


def settings_table_markdown() -> str:
    """Every setting as a Markdown table (setting, default, description), grouped as in ``SETTING_GROUPS``."""
    rows = ["| Setting | Default | Description |", "| --- | --- | --- |"]
    for names in SETTING_GROUPS.values():
        for name in names:
            default = default_text(name)
            description = (SearchConfig.model_fields[name].description or "").replace("|", "\\|")
            if (allowed := range_text(name)) is not None:
                description += f" ({allowed})"
            rows.append(f"| `{name}` | {f'`{default}`' if default is not None else ''} | {description} |")
    return "\n".join(rows) + "\n"


def with_default_workers(config: SearchConfig) -> SearchConfig:
    """On GPUs, unless ``workers`` was set: one candidate per GPU slot (GPUs x ``candidates_per_gpu``; with ``auto``
    its maximum, the slots in use are limited per generation).

    A ``device`` that names no usable GPU is a ConfigError.
    """
    from nas_core.evaluation.devices import DeviceError, trains_on_gpus, visible_devices

    remote = config.runner == "dask" and bool(config.dask_address)
    try:
        gpus = trains_on_gpus(config.device, remote_cluster=remote)
    except DeviceError as exc:
        raise ConfigError(str(exc)) from None
    if "workers" not in config.model_fields_set and gpus and not remote:
        return config.model_copy(update={"workers": len(visible_devices(config.device)) * config.max_candidates_per_gpu})
    return config


def _scalar_kind(annotation: Any) -> type | None:
    """bool, int or float when a field holds one of them (or None), else None."""
    kinds = [kind for kind in get_args(annotation) if kind is not type(None)] if get_origin(annotation) else [annotation]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float) else None


def _known(kind: str, value: str, registry: Mapping[str, Any]) -> str:
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


def config_from(values: dict[str, Any]) -> SearchConfig:
    """``SearchConfig(**values)``; invalid values are a one-line ConfigError naming the setting."""
    try:
        return SearchConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def _table_space(space: str) -> bool:
    """Whether ``space``'s genomes are table keys (it has ``arch_string``)."""
    from nas_core.spaces import SPACES

    return hasattr(SPACES[space](), "arch_string")


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
            if isinstance(exc, yaml.constructor.ConstructorError):  # e.g. !!python/object: safe_load refuses it
                raise ConfigError(f"config file {path} has a YAML tag that is not allowed{where}; write plain values") from None
            raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping of settings, e.g. 'budget: 20'")
        bad_keys = [k for k in (loaded or {}) if not isinstance(k, str)]
        if bad_keys:
            raise ConfigError(f"config file {path}: setting names must be text, got {bad_keys[0]!r}")
        values.update(loaded or {})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = config_from(values)
    if config.table_path is not None and not _table_space(config.space):
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
