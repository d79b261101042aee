"""Running a checked search in this process and reporting it: the environment Prefect gets, the search's log file,
the summary table, the exit code. ``nas search`` runs it after checking its input; the search worker
(:mod:`flows.search_worker`) runs it for the searches handed to it. Only the standard library, typer's rich and
the lightweight parts of the project are imported here: Prefect, MLflow and torch come when a search runs."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from nas_core.search.gate import Gate
    from nas_core.search.summary import SearchSummary

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_GATE = 3  # the search worked but its best candidate missed a --fail-under gate (CI)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it (128 + SIGINT)

console = Console(stderr=True, highlight=False, soft_wrap=True)


SEARCH_LOG = "search.log"  # in the search's output folder: Prefect's warnings and errors, with their tracebacks


def prefect_environment(project_dir: Path, quiet_console: bool = False) -> None:
    """Keep Prefect's state inside the project, offline, and quiet unless the user says otherwise.

    With ``quiet_console`` (a search) Prefect writes nothing under CRITICAL to the terminal, where a failure is one
    line of ours: :func:`_log_to` keeps the details in the search's log file (NAS_DEBUG=1 shows them here).
    """
    os.environ.setdefault("PREFECT_HOME", str((project_dir / ".prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if quiet_console and not os.environ.get("NAS_DEBUG"):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


class _SearchLog(logging.FileHandler):
    """The search's log file; when it cannot be written (a full disk) it goes quiet instead of printing tracebacks:
    the search's own one-line error says what failed."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        logging.getLogger().removeHandler(self)
        with contextlib.suppress(OSError):
            self.close()


def _log_to(path: Path) -> logging.Handler:
    """Send warnings and errors logged in this process (Prefect's flow and task failures) to ``path``; call it after
    Prefect is imported, which configures logging. The file is created only when something is logged."""
    handler = _SearchLog(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def print_summary(summary: SearchSummary) -> None:
    best, ok, total = summary.best, summary.ok_candidates, len(summary.candidates)
    table = Table(title=f"search {summary.search_id}", show_header=False)
    table.add_row("dataset", f"{summary.dataset['name']} (version {summary.dataset['version']})")
    reused = sum(bool(c.get("reused_from")) for c in summary.candidates)
    with_reused = f" + {reused} reused" if reused else ""
    table.add_row("candidates", f"{total - reused} trained{with_reused}, {ok} ok, {total - ok} failed")
    if summary.warm_start:
        warm = summary.warm_start
        table.add_row("warm start", f"told {warm['told']} earlier evaluations of {len(warm['searches'])} searches, "
                      f"{warm['seeded']} seed architectures")  # fmt: skip
    stopped = f"; stopped proposing: {summary.stop_reason}" if summary.stop_reason else ""
    limit = f" of {summary.time_budget_seconds:g} s" if summary.time_budget_seconds else ""
    table.add_row("elapsed", f"{summary.elapsed_seconds:.1f} s (candidates: {summary.spent_seconds:.1f} s{limit}){stopped}")
    if best:
        test = f"{best.test_accuracy:.4f}" if best.test_accuracy is not None else "none"
        table.add_row("best", f"{best.hash[:12]}  val_acc {best.val_accuracy:.4f}  test_acc {test}")
        table.add_row("size", f"{best.params:,} params, {best.flops:,} FLOPs")
        if best.onnx_path:
            table.add_row("ONNX model", f"{best.onnx_path} (max |diff| vs PyTorch {best.onnx_max_abs_diff:.2e})")
        elif best.model_error:
            table.add_row("ONNX model", f"none: {escape(best.model_error)}")
    table.add_row("MLflow", f"experiment '{summary.mlflow_experiment}', parent run {summary.mlflow_run_id}")
    Console().print(table)
    print(f"summary: {summary.folder / 'summary.json'}")
    if not best or best.onnx_path:
        none = "the time budget ended before any candidate finished" if not summary.candidates else "every candidate failed"
        if summary.ok_candidates:  # trained, yet none qualifies: over max_latency_ms when measured
            none = "no candidate met max_latency_ms when its network was measured (see docs/latency.md)"
        print(f"ONNX model: {best.onnx_path if best else f'(none: {none})'}")
    if best and best.final_run_id and summary.final:
        final = summary.final
        print(f"final model: retrained {final['epochs']} epochs on {final['trained_on']}, test_acc {final['test_accuracy']:.4f}")
    if (summary.folder / "report.html").is_file():
        print(f"report: {summary.folder / 'report.html'}")
    if best and best.handoff_path:
        print(f"handoff bundle: {best.handoff_path} (model.onnx, model_card.md, predict.py)")
    if best and best.registry:
        reg = best.registry
        print(f"model registry: {reg['model_uri']}, {'champion' if reg['promoted'] else 'not promoted'} ({reg['reason']})")
    champion = bool(best and best.registry and best.registry["promoted"])
    for model in summary.pareto or ():
        print(_pareto_line(model, champion and model["best"]))
    print(f"MLflow runs: {summary.mlflow_ui}")


def _pareto_line(model: dict[str, Any], champion: bool) -> str:
    """One handed-over model of the front: accuracy, measured (and predicted) latency, registry version and aliases."""
    aliases = ", ".join((["champion"] if champion else []) + model["aliases"]) or "no alias"
    return (
        f"pareto model: val_acc {model['val_accuracy']:.4f}, {model['measured_latency_ms']:.4g} ms at batch "
        f"{model['latency_batch']} (predicted {model['predicted_latency_ms']}), models:/{model['registered_model']}/"
        f"{model['registry_version']} ({aliases}) -> {model['handoff_path']}"
    )


def gate_and_markdown(summary: SearchSummary, gates: list[Gate], summary_md: Path | None) -> int:
    """Write the Markdown summary, then the exit code: 1 when nothing trained, 3 when a gate missed, else 0."""
    from nas_core.search.gate import check_gates, failure_line, write_markdown_summary

    checks = check_gates(gates, summary) if gates else None
    if summary_md is not None:
        print(f"Markdown summary: {write_markdown_summary(summary_md.absolute(), summary, checks, base=Path.cwd())}")
    if summary.best is None:
        console.print("error: every candidate failed; see the failure_reason tags of the runs in MLflow")
        return EXIT_FAILED
    if summary.best.model_error:
        console.print(
            f"error: the search has no model: {escape(summary.best.model_error)}; the best genome is in "
            f"{summary.folder / 'summary.json'} (best.genome)"
        )
        return EXIT_FAILED
    if checks and not all(c.passed for c in checks):
        console.print(failure_line(checks))
        return EXIT_GATE
    if checks:
        print("gate passed: " + ", ".join(c.describe() for c in checks))
    return EXIT_OK


def run_search(
    config, search_id: str, resume: bool, quiet: bool, gates: list[Gate], summary_md: Path | None
) -> int:  # fmt: skip
    """Run a checked search in this process (the command's own, or the search worker's); its exit code."""
    out = Path(config.output)
    prefect_environment(config.project_dir, quiet_console=True)  # before anything imports prefect
    from flows.search import search_flow
    from flows.temporary_server import claim_temporary_server

    claim_temporary_server()
    log_handler = _log_to(out / SEARCH_LOG)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (creating its tables) are not news here
    from flows.signals import Interrupted, stop_on_signals
    from nas_core.evaluation.stopping import SearchStopped, stop_requested
    from nas_core.search.summary import SearchSummary
    from nas_pipeline.mlflow_tracking import TrackingUnavailable

    try:
        with stop_on_signals():  # Ctrl-C and SIGTERM: candidates' runs KILLED, checkpoint kept, out in seconds
            result = search_flow(config)(
                config.model_dump(mode="json"), search_id=search_id, show_progress=not quiet, resume=resume
            )
    except (Interrupted, SearchStopped) as exc:
        if isinstance(exc, SearchStopped) and not stop_requested():
            raise
        why = f"by {exc}" if isinstance(exc, Interrupted) else "on request"  # the worker's search: the command's Ctrl-C
        console.print(f"stopped {why}: runs in flight marked KILLED, checkpoint kept; continue: nas search --resume {out}")
        return exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED
    except TrackingUnavailable as exc:
        console.print(f"error: {escape(str(exc))}; the search stopped; continue it with: nas search --resume {out}")
        return EXIT_FAILED
    finally:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
    summary = SearchSummary.from_dict(result)
    print_summary(summary)
    return gate_and_markdown(summary, gates, summary_md)


def report_failure(exc: Exception) -> int:
    """An unexpected failure of a command as one line; exit code 1."""
    from nas_core.data.preparation import DatasetError
    from nas_pipeline.dvc_versioning import VersioningError

    if isinstance(exc, (VersioningError, DatasetError)):  # its message already says what to do
        console.print(f"error: {escape(str(exc))}")
        return EXIT_FAILED
    console.print(
        f"error: {escape(type(exc).__name__)}: {escape(str(exc).splitlines()[0] if str(exc) else '')} "
        "(set NAS_DEBUG=1 for the traceback)"
    )
    return EXIT_FAILED
