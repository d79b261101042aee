"""The ``nas`` command: bad input becomes one line and exit code 2; a search that finds nothing exits 1."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import click
import typer
from rich.markup import escape

from flows.running import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    console,
    prefect_environment,
    report_failure,
    run_search,
)
from flows.settings import SearchCommand, given_settings, option_name

if TYPE_CHECKING:
    from nas_core.search.gate import Gate


app = typer.Typer(
    help="Neural architecture search as a pipeline: Prefect flow, MLflow tracking, DVC data, ONNX out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# typer >= 0.22 raises its own (vendored) click exceptions; older releases raise click's.
_EXIT = (click.exceptions.Exit, typer.Exit)
_ABORT = (click.exceptions.Abort, typer.Abort)
_USAGE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))


class UsageProblem(Exception):
    """Bad input from the user: reported as one line with exit code 2."""


def _tracking_server_problem() -> str | None:
    """The error line when the tracking server set by MLFLOW_TRACKING_URI does not answer, else None (exit code 1)."""
    from flows.preflight import unreachable_tracking_server

    problem = unreachable_tracking_server()
    return f"error: {escape(problem)}" if problem else None


def _use_running_stack(project_dir: Path, in_process: bool = False) -> tuple[str, str | None]:
    """Point the search at the servers `nas up` runs for the project, where PREFECT_API_URL / MLFLOW_TRACKING_URI do
    not say otherwise; which Prefect and MLflow it uses, in words, and the URL of the stack's search worker when the
    search is to run there (it answers, is free, and uses the same servers), else None."""
    from flows.stack import free_search_worker, running_urls

    wanted = [key for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI") if not os.environ.get(key)]
    urls = running_urls(project_dir) if wanted or not in_process else {}
    for key, name in (("PREFECT_API_URL", "prefect"), ("MLFLOW_TRACKING_URI", "mlflow")):
        if key in wanted and name in urls:
            os.environ[key] = urls[name]
    prefect = os.environ.get("PREFECT_API_URL") or "temporary server"
    mlflow = os.environ.get("MLFLOW_TRACKING_URI") or str(Path(project_dir).resolve() / "mlflow.db")
    words = f"Prefect: {prefect}, MLflow: {mlflow}"
    same_servers = (urls.get("prefect"), urls.get("mlflow")) == (prefect, mlflow)
    if "searches" not in urls or in_process or not same_servers or os.environ.get("NAS_DEBUG"):
        return words, None
    if worker := free_search_worker(project_dir):
        return f"{words}; runs in the warm search worker {worker}", worker
    return f"{words}; the search worker is busy: runs here", None


def _check_writable(folder: Path) -> None:
    """Create the output folder, or say in one line (nothing left behind) why it cannot hold the search's outputs."""
    from flows.preflight import NotWritable, make_output_folder

    try:
        make_output_folder(folder)
    except NotWritable as exc:
        raise UsageProblem(str(exc)) from None


def _load_search_config(config_file: Path | None, overrides: dict[str, Any]):
    from nas_core.config import ConfigError, load_config

    try:  # first: most bad settings are reported before anything imports torch
        config = load_config(config_file, overrides)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None
    if not config.project_dir.is_dir():
        raise UsageProblem(f"project folder '{config.project_dir}' does not exist; pass --project-dir")
    if config.init_genome is not None:  # its limits and structure first: cheap (no torch, no MLflow), nothing read yet
        from nas_core.genome import Genome

        _genome_or_usage(config.init_genome, Genome.read)
    _check_places(config)  # cheap: a read-only or full project stops here, before any data is read
    if config.table_path is not None:
        from nas_core.evaluation.table import TableError, TableEvaluator

        try:
            TableEvaluator.load(config.table_path, config.select_metric, config.report_metric)
        except TableError as exc:
            raise UsageProblem(str(exc)) from None
    from nas_core.data.preparation import DatasetError, read_source, ships_with_a_library
    from nas_core.search.setup import fit_space_to_data

    try:  # the source is there and the space fits its inputs (no --space: image or sequence, by the data)
        config = fit_space_to_data(config)
        _check_latency_provider(config)  # the space is known now: whether the search times latencies
        if config.table_path is None and not ships_with_a_library(config.dataset):
            read_source(config.dataset, config.data_root, config.download)  # bad data is bad input, found before the search
    except DatasetError as exc:
        raise UsageProblem(str(exc)) from None
    if config.init_genome is not None:  # the space is known now: the genome must be one it can propose
        from nas_core.search.proposing import read_init_genome
        from nas_core.search.setup import space_options
        from nas_core.spaces import create_space

        space = create_space(config.space, hparams=config.hparams, **space_options(config))
        _genome_or_usage(config.init_genome, lambda path: read_init_genome(path, space))
    return config


def _check_warm_start(config) -> None:
    """The earlier searches a warm start names exist in the store and searched the same space; else bad input."""
    from flows.preflight import warm_start_problem

    if problem := warm_start_problem(config):
        raise UsageProblem(problem)


def _check_places(config) -> None:
    """Every place the search writes to (project, data, stores) can be written; else bad input, nothing written."""
    from flows.preflight import NotWritable, check_places, search_places

    try:
        check_places(search_places(config))
    except NotWritable as exc:
        raise UsageProblem(str(exc)) from None


def _check_latency_provider(config) -> None:
    """A search that times latencies (a trained image or sequence space) needs its ``latency_provider`` here:
    onnxruntime would quietly fall back to the CPU, and the figures would name a provider they were not timed on."""
    from nas_core.latency import LATENCY_SPACES

    if config.table_path is not None or config.space not in LATENCY_SPACES:
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    if config.latency_provider not in available:
        raise UsageProblem(
            f"latency_provider '{config.latency_provider}' is not available here (available: {', '.join(available)}); "
            "pass one of them as --latency-provider"
        )


def _genome_or_usage(path: Path, read):
    """``read(path)``; an unreadable file or an invalid genome is bad input."""
    from nas_core.genome import GenomeError

    try:
        return read(path)
    except OSError as exc:
        raise UsageProblem(f"cannot read genome file {path}: {exc.strerror}") from None
    except GenomeError as exc:
        raise UsageProblem(f"invalid genome in {path}: {exc}") from None


def _check_not_a_search(folder: Path) -> None:
    from nas_core.search.checkpoint import SEARCH_FILE

    if (folder / SEARCH_FILE).exists():
        raise UsageProblem(f"'{folder}' already holds a search; continue it with --resume {folder} or pass another --output")


def _resumed_config(target: str, config_file: Path | None, overrides: dict[str, Any]):
    """The saved config of the search to resume, with the execution settings given now."""
    from nas_core.config import EXECUTION_SETTINGS, ConfigError, config_from
    from nas_core.search.checkpoint import ResumeError, check_resume_files, read_saved_search
    from nas_pipeline.pipeline import find_search_output

    given = [option_name(k) for k in overrides if k not in EXECUTION_SETTINGS and k != "project_dir"]
    if config_file is not None or given:
        flags = ", ".join(["--config"] * (config_file is not None) + given)
        raise UsageProblem(f"--resume continues the saved settings; drop {flags} (only execution flags such as --workers apply)")
    execution = {k: v for k, v in overrides.items() if k in EXECUTION_SETTINGS}
    try:
        folder = find_search_output(target, overrides.get("project_dir") or Path("."))
        saved = read_saved_search(folder)
        config = config_from({**saved["config"], **execution, "output": folder})
    except (ResumeError, ConfigError) as exc:
        raise UsageProblem(str(exc)) from None
    if (folder / "summary.json").exists():
        raise UsageProblem(f"search {saved['search_id']} in '{folder}' already finished (summary.json exists); nothing to resume")
    _check_places(config)
    _check_latency_provider(config)  # the saved one: this machine may lack it
    from nas_core.search.proposing import Proposer

    restore = Proposer(config, folder, resume=True).load_state  # the strategy's state is checked by loading it
    try:  # every file the search will read, before anything starts: a damaged one is named here, not in a traceback
        for note in check_resume_files(folder, saved["search_id"], config.table_path is None, restore):
            console.print(f"warning: {escape(note)}")
    except ResumeError as exc:
        raise UsageProblem(str(exc)) from None
    return config, saved["search_id"]


def _with_default_workers(config):
    """On GPUs, unless --workers was given: one candidate per GPU slot (see ``nas_core.config.with_default_workers``)."""
    from nas_core.config import ConfigError, with_default_workers

    try:
        return with_default_workers(config)
    except ConfigError as exc:
        raise UsageProblem(str(exc)) from None


def _parse_gates(texts: list[str] | None, summary_md: Path | None) -> list[Gate]:
    """The ``--fail-under`` gates; a malformed gate or an unusable ``--summary-md`` path is bad input."""
    gates: list[Gate] = []
    if texts:
        from nas_core.search.gate import GateError, parse_gates

        try:
            gates = parse_gates(texts)
        except GateError as exc:
            raise UsageProblem(str(exc)) from None
    if summary_md is not None:
        if summary_md.is_dir():
            raise UsageProblem(f"--summary-md '{summary_md}' is a folder; pass a file name such as summary.md")
        folder = next(p for p in (summary_md.absolute().parent, *summary_md.absolute().parents) if p.exists())
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UsageProblem(f"--summary-md '{summary_md}' cannot be written ('{folder}' is not a writable folder)")
    return gates


def _check_gate_metrics(gates: list[Gate], table_evaluator: bool) -> None:
    if not gates:
        return
    from nas_core.search.gate import GateError, check_applicable

    try:
        check_applicable(gates, table_evaluator)
    except GateError as exc:
        raise UsageProblem(str(exc)) from None


@app.command(cls=SearchCommand)
def search(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="YAML file of settings named as below (max_epochs: 4); flags override it.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue an interrupted search: its --output folder or its search id. Only execution flags apply."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-candidate progress lines.")] = False,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-under",
            metavar="METRIC=VALUE",
            help="CI gate: exit 3 when the best candidate's METRIC (val_accuracy, val_f1, test_accuracy or test_f1) "
            "is under VALUE, e.g. val_accuracy=0.97. Repeat it for several gates; all must pass.",
        ),
    ] = None,
    summary_md: Annotated[
        Path | None, typer.Option("--summary-md", help="Also write a short Markdown table of the search (for a PR comment).")
    ] = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="Run here even when the search worker of `nas up` is free.")
    ] = False,
) -> int:
    """Run an architecture search; writes OUTPUT/model.onnx and OUTPUT/summary.json.

    Settings come from their defaults, then the --config file, then the flags given here (--max-epochs is the
    file's max_epochs). Exit codes: 0 success; 1 the search failed; 2 bad input (nothing written); 3 the best
    missed a --fail-under gate.
    """
    gates = _parse_gates(fail_under, summary_md)  # before anything is written or searched
    overrides = given_settings(ctx)
    if resume is not None:
        config, search_id = _resumed_config(resume, config_file, overrides)
        config = _with_default_workers(config)
        _check_gate_metrics(gates, config.table_path is not None)
        services, worker = _use_running_stack(config.project_dir, in_process)
        if problem := _tracking_server_problem():
            console.print(problem)
            return EXIT_FAILED
        out = Path(config.output)
    else:
        config = _with_default_workers(_load_search_config(config_file, overrides))
        _check_gate_metrics(gates, config.table_path is not None)
        services, worker = _use_running_stack(config.project_dir, in_process)
        if problem := _tracking_server_problem():
            console.print(problem)
            return EXIT_FAILED
        _check_warm_start(config)
        from nas_core.search.setup import new_search_id

        search_id = new_search_id()
        out = (config.output or Path("outputs") / search_id).resolve()
        _check_writable(out)
        _check_not_a_search(out)
        config = config.model_copy(update={"output": out})
    plan = (
        f"{config.budget} candidates x {config.min_epochs}..{config.top_epochs} epochs (eta {config.eta}, {config.schedule})"
        if config.fidelity == "epochs"
        else f"{config.budget} candidates x {config.epochs} epochs"
    )
    console.print(  # before the heavy imports (torch, Prefect, MLflow: seconds): the user sees at once what runs
        f"{'resuming search' if resume else 'search'} {search_id}: {config.strategy} on {config.dataset}, "
        f"{plan}, {config.workers} in parallel ({config.runner}) -> {out}; {services}"
    )
    if worker:
        from flows.stack import task_storage

        os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(task_storage(config.project_dir))  # the worker's
        prefect_environment(config.project_dir, quiet_console=True)  # before anything imports prefect
        from flows.search_worker import SearchRequest, hand_off

        request = SearchRequest.of(config, search_id, resume is not None, quiet, fail_under or [], summary_md)
        if (code := hand_off(worker, request)) is not None:
            return code
    return run_search(config, search_id, resume is not None, quiet, gates, summary_md)


@app.command()
def prepare(
    dataset: Annotated[
        str, typer.Option(help="Dataset: digits, mnist, fashion-mnist, cifar10, imagefolder:PATH or npz:PATH.")
    ] = "digits",
    project_dir: Annotated[Path, typer.Option(help="Project folder (data/ and data.dvc go here).")] = Path("."),
    data_root: Annotated[
        Path | None, typer.Option(help="Folder with torchvision's files (MNIST/raw/..., cifar-10-batches-py/...).")
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Download mnist, fashion-mnist or cifar10 into --data-root.")
    ] = False,
) -> int:
    """Prepare a dataset under data/, track it with DVC (data.dvc) and push it to the DVC remote."""
    from flows.preflight import NotWritable, check_places, data_places
    from nas_core.data.preparation import DatasetError, inspect_source, read_source
    from nas_pipeline.dvc_versioning import DvcDataStore

    if not project_dir.is_dir():
        raise UsageProblem(f"project folder '{project_dir}' does not exist; pass --project-dir")
    try:  # everything checked, the data read included, before DVC or data/ is touched
        inspect_source(dataset, data_root, download)
        check_places(data_places(project_dir, dataset))
        read_source(dataset, data_root, download)
        ref = DvcDataStore(project_dir).prepare(dataset, data_root, download)
    except (DatasetError, NotWritable) as exc:
        raise UsageProblem(str(exc)) from None
    print(f"prepared {ref.name} in {ref.path}; dataset version {ref.version} (data.dvc)")
    return EXIT_OK


@app.command()
def validate(genome_file: Annotated[Path, typer.Argument(help="Genome JSON file.")]) -> int:
    """Check a genome file; print its canonical hash."""
    from nas_core.genome import Genome

    genome = _genome_or_usage(genome_file, lambda path: Genome.read(path).validate())
    print(f"valid genome: {len(genome.nodes) - 2} ops, {len(genome.edges)} edges, hash {genome.canonical_hash()}")
    return EXIT_OK


@app.command()
def deploy(
    config_file: Annotated[Path | None, typer.Option("--config", help="YAML file of settings, as for `nas search`.")] = None,
    cron: Annotated[str | None, typer.Option(help="When to search, a cron string (default: '0 2 * * *', 02:00 daily).")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA timezone of the cron schedule (default: UTC).")] = None,
    name: Annotated[str | None, typer.Option(help="Deployment name (default: nightly).")] = None,
    pool: Annotated[str | None, typer.Option(help="Process work pool; created when missing (default: nas-pool).")] = None,
    project_dir: Annotated[Path | None, typer.Option(help="Folder with data.dvc, data/, mlflow.db (default: .).")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Run the scheduled searches from this process (no worker).")] = False,
) -> int:
    """Schedule searches: a deployment with a cron schedule on the Prefect server at PREFECT_API_URL."""
    config = _load_search_config(config_file, {"project_dir": project_dir})
    if serve:  # the searches run here: their progress goes to this terminal and the Prefect UI
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    prefect_environment(config.project_dir)  # before anything imports prefect
    from flows import deployments as dep
    from nas_pipeline.mlflow_tracking import resolve_tracking_uri, ui_command

    name, pool = name or dep.DEFAULT_NAME, pool or dep.DEFAULT_POOL
    try:
        schedule = dep.cron_schedule(cron or dep.DEFAULT_CRON, timezone or dep.DEFAULT_TIMEZONE)
        parameters = dep.search_parameters(config)
        dep.api_url()
        created = False if serve else dep.ensure_process_pool(pool)
    except dep.ServerError as exc:  # configured but not answering: not the user's input
        console.print(f"error: {escape(str(exc))}")
        return EXIT_FAILED
    except dep.DeployError as exc:
        raise UsageProblem(str(exc)) from None
    when = f"cron '{schedule.cron}' ({schedule.timezone})"
    mlflow_runs = f"MLflow runs: {ui_command(resolve_tracking_uri(config.project_dir))}"
    full_name = f"{dep.FLOW_NAME}/{name}"
    if serve:
        console.print(f"serving '{full_name}': {when}; Ctrl-C stops it (and pauses its schedule)")
        console.print(f"runs: {dep.ui_url()}\n{mlflow_runs}")
        dep.serve(parameters, schedule, name)
        return EXIT_OK
    deployment_id = dep.register(parameters, schedule, name, pool)
    print(f"deployment '{full_name}' registered: {when}, work pool '{pool}'{' (created)' if created else ''}")
    print(f"start a worker: prefect worker start --pool '{pool}'")
    print(f"run it now: prefect deployment run '{full_name}'")
    print(f"runs: {dep.ui_url(deployment_id)}")
    print(mlflow_runs)
    return EXIT_OK


@app.command()
def export(
    search: Annotated[str, typer.Argument(help="A finished search: its output folder or its search id.")],
    output: Annotated[Path, typer.Option("--output", help="Folder for the bundle; must be new or empty.")],
    project_dir: Annotated[Path, typer.Option(help="Project whose MLflow store knows the search id (default: .).")] = Path("."),
    quantize: Annotated[
        Literal["none", "int8"], typer.Option(help="Also an int8 model (static quantization, calibrated on the train split).")
    ] = "none",
    max_accuracy_drop: Annotated[
        float, typer.Option(help="The most test accuracy the int8 model may lose; else it is dropped.", min=0, max=1)
    ] = 0.005,
) -> int:
    """Write a finished search's handoff bundle (model.onnx, model card, predict.py); the search is only read."""
    from nas_core.search.checkpoint import ResumeError
    from nas_pipeline.handoff import HandoffError, export_search
    from nas_pipeline.pipeline import find_search_output

    if Path(search).is_dir() and not (Path(search) / "search.json").is_file():
        raise UsageProblem(f"'{search}' holds no search (no search.json); pass a finished search's output folder or its id")
    int8 = None
    if quantize == "int8":
        from nas_pipeline.quantization import stored_quantizer

        int8 = stored_quantizer(max_accuracy_drop)
    try:
        folder = find_search_output(search, project_dir)
        bundle = export_search(folder, output, int8)
    except (ResumeError, HandoffError) as exc:
        raise UsageProblem(str(exc)) from None
    print(f"handoff bundle of {folder}: {bundle}")
    if (bundle / "example_input.npy").is_file():
        print(f"try it: cd {bundle} && python predict.py example_input.npy")
    return EXIT_OK


@contextlib.contextmanager
def _fail_fast_mlflow():
    """An unreachable MLflow server fails in seconds, not after MLflow's default minutes of retries."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {key: os.environ.get(key) for key in quick}
    os.environ.update({key: value for key, value in quick.items() if saved[key] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


@app.command()
def report(
    search: Annotated[str, typer.Argument(help="A finished search: its output folder or its search id.")],
    output: Annotated[Path | None, typer.Option("--output", help="HTML file (default: the search folder's report.html).")] = None,
    project_dir: Annotated[Path, typer.Option(help="Project whose MLflow store knows the search id (default: .).")] = Path("."),
) -> int:
    """Write a finished search's report: one self-contained HTML file with plots, curves and every candidate."""
    from nas_core.search.checkpoint import ResumeError
    from nas_pipeline.pipeline import find_search_output
    from nas_pipeline.report import ReportError, curve_run_ids, fetch_histories, load_summary, write_report
    from nas_pipeline.stores import resolve_tracking_uri

    if Path(search).is_dir() and not (Path(search) / "search.json").is_file():
        raise UsageProblem(f"'{search}' holds no search (no search.json); pass a finished search's output folder or its id")
    if output is not None and output.is_dir():
        output = output / "report.html"
    try:
        folder = find_search_output(search, project_dir)
        summary = load_summary(folder)
    except (ResumeError, ReportError) as exc:
        raise UsageProblem(str(exc)) from None
    uri = summary.mlflow_tracking_uri or resolve_tracking_uri(project_dir)
    try:
        with _fail_fast_mlflow():
            histories = fetch_histories(uri, curve_run_ids(summary))
    except Exception as exc:  # any MLflow or network failure: the report is still worth writing, without curves
        histories = {}
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        console.print(f"warning: the report has no learning curves: cannot read MLflow at {escape(uri)} ({escape(reason)})")
    path = write_report(folder, output, histories)
    print(f"report of {folder}: {path.resolve()}")
    return EXIT_OK


ProjectOption = Annotated[Path, typer.Option(help="Project folder (default: .).")]


@app.command()
def up(
    project_dir: ProjectOption = Path("."),
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server (and its UI).", min=1, max=65535)] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow tracking server (and its UI).", min=1, max=65535)] = 5000,
    worker_port: Annotated[
        int, typer.Option(help="Port of the search worker's /status (searches run there warm).", min=1, max=65535)
    ] = 4300,
    backend_store: Annotated[
        str | None, typer.Option(help="MLflow's backend store, e.g. postgresql://user@host/db (default: project's mlflow.db).")
    ] = None,
) -> int:
    """Start a Prefect server, an MLflow tracking server and a warm search worker for the project, in the background,
    on 127.0.0.1."""
    from flows.stack import StackError
    from flows.stack import up as start_stack

    if not project_dir.is_dir():
        raise UsageProblem(f"project folder '{project_dir}' does not exist; pass --project-dir")
    ports = {"--prefect-port": prefect_port, "--mlflow-port": mlflow_port, "--worker-port": worker_port}
    if len(set(ports.values())) < len(ports):
        raise UsageProblem(f"{', '.join(f'{flag} {port}' for flag, port in ports.items())}: give them different ports")
    console.print("starting the Prefect and MLflow servers, then the search worker (up to a few minutes on a busy machine) ...")
    try:
        services = start_stack(project_dir, prefect_port, mlflow_port, backend_store, worker_port=worker_port)
    except StackError as exc:
        console.print(f"error: {escape(str(exc))}")
        return EXIT_FAILED
    for service in services:
        print(f"{service.name}: {service.url} (log {service.log})")
    print("nas search in this project now uses them; stop them with: nas down")
    return EXIT_OK


@app.command()
def status(project_dir: ProjectOption = Path(".")) -> int:
    """Show the servers `nas up` started for the project, and whether they answer (exit 1 when one does not)."""
    from flows.stack import StackError, read_stack

    try:
        services = read_stack(project_dir)
    except StackError as exc:
        raise UsageProblem(str(exc)) from None
    if not services:
        print("no servers: start them with nas up (nas search uses the embedded stores meanwhile)")
        return EXIT_FAILED
    answering = [service.answers() for service in services]
    for service, ok in zip(services, answering, strict=True):
        print(f"{service.name}: {service.url} {'answers' if ok else 'does not answer'} (pid {service.pid}, log {service.log})")
    return EXIT_OK if all(answering) else EXIT_FAILED


@app.command()
def down(project_dir: ProjectOption = Path(".")) -> int:
    """Stop the servers `nas up` started for the project (and only those)."""
    from flows.stack import StackError
    from flows.stack import down as stop_stack

    try:
        stopped = stop_stack(project_dir)
    except StackError as exc:
        raise UsageProblem(str(exc)) from None
    for service, outcome in stopped:
        print(f"{service.name}: {outcome}")
    if not stopped:
        print("no servers were started here with nas up")
    return EXIT_OK


def _one_line_warning(message: Warning | str, category: type[Warning], *_where: object) -> str:
    """Warnings read like the rest of the command's output: ``warning: ...``, one line, no source line."""
    return f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nas`` console script."""
    if not os.environ.get("NAS_DEBUG"):
        warnings.formatwarning = _one_line_warning
    try:
        result = app(args=argv, standalone_mode=False)
    except _EXIT as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _ABORT:
        console.print("aborted")
        return EXIT_INTERRUPTED
    except _USAGE_ERRORS as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        message = message.replace(": Value error, ", ": ")  # typer >= 0.22 words a bad choice so
        if message:  # empty when the help was shown instead of running (no arguments)
            console.print(f"error: {escape(message)} (see --help)")
        return EXIT_USAGE
    except UsageProblem as exc:
        console.print(f"error: {escape(str(exc))}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.print("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("NAS_DEBUG"):
            raise
        return report_failure(exc)
    return result if isinstance(result, int) else EXIT_OK


def run() -> None:
    """The ``nas`` console script: :func:`main`, then exit without tearing the interpreter down.

    Python's own exit would spend about 2 s after a search unloading torch, Prefect and MLflow module by module,
    with the result already printed. Here what that exit does first still happens, in its order: the threads'
    exit hooks (Prefect's log and event workers send what they hold), then the ``atexit`` handlers (logging's
    file handlers flush and close, MLflow's queues drain); then the output streams are flushed and the process
    ends with :func:`main`'s code.
    """
    code = main()
    shutdown_threads = getattr(threading, "_shutdown", None)  # CPython's exit: joins non-daemon threads, runs their hooks
    if shutdown_threads is None:  # another interpreter: its own exit, slower or not
        sys.exit(code)
    try:
        shutdown_threads()
        atexit._run_exitfuncs()
    except KeyboardInterrupt:  # Ctrl-C while the exit waits for a thread: one line, as anywhere else
        console.print("interrupted")
        code = EXIT_INTERRUPTED
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
