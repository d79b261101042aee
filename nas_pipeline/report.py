"""A finished search as one self-contained HTML file: summary, search plots, best architecture, curves, candidates.

Nothing is loaded from elsewhere when the file is opened: styles and the table-sorting script are inline and
figures are PNGs embedded as base64 data URIs. Every string taken from the search's data is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
import math
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from nas_core.search.checkpoint import SEARCH_FILE
from nas_core.search.summary import SUMMARY_FILE, SearchSummary, SummaryError
from nas_pipeline import plots
from nas_pipeline.mlflow_tracking import is_transient

REPORT_FILE, PLOTS_DIR = "report.html", "plots"
CURVES_SHOWN = 5  # learning curves of this many top candidates

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem}
td,th{padding:.2rem .5rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.facts th{font-weight:600;color:#555;white-space:nowrap}
table.sortable th{cursor:pointer;background:#f5f5f5;position:sticky;top:0}table.sortable th:hover{background:#e8e8e8}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.best{background:#fff4d6}tr.failed{color:#999}
td.reason{max-width:22rem;overflow-wrap:anywhere}code{font-size:.85em}
.figures{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}.figures figure{margin:0}
figcaption{font-size:.8rem;color:#555}img{max-width:100%;height:auto}pre{white-space:pre-wrap;font-size:.75rem;max-width:40rem}
"""

# Click a header to sort by that column (numbers by data-sort, missing values last); click again to reverse.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var up = th.dataset.dir !== "asc";
      th.dataset.dir = up ? "asc" : "desc";
      var rows = Array.prototype.slice.call(table.tBodies[0].rows);
      var key = function (row) {
        var cell = row.cells[col], raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        var num = parseFloat(raw);
        return raw === "" ? null : (isNaN(num) || cell.dataset.sort === undefined ? raw : num);
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
        var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return up ? order : -order;
      });
      rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    });
  });
});
"""


class ReportError(ValueError):
    """The folder holds no finished search to report on."""


# ---- reading a search ---------------------------------------------------------------------------
def load_summary(output: Path) -> SearchSummary:
    """The ``summary.json`` of a search's output folder; ReportError saying what is missing."""
    path = Path(output) / SUMMARY_FILE
    try:
        return SearchSummary.read(output)
    except SummaryError as exc:
        if not path.exists():
            raise ReportError(f"'{output}' has no {SUMMARY_FILE}: the search has not finished (--resume it first)") from None
        if str(exc).startswith("cannot read"):
            raise ReportError(str(exc)) from None
        raise ReportError(f"{path} is not a search summary: {exc}") from None


def _space_dims(output: Path) -> int:
    """Spatial dimensions of the search's inputs (labels say ``k3`` instead of ``3x3`` for sequences)."""
    try:
        space = json.loads((Path(output) / SEARCH_FILE).read_text())["config"]["space"]
        from nas_core.spaces import SPACES

        return int(getattr(SPACES[space], "input_ndim", 2))
    except (OSError, ValueError, KeyError, TypeError):
        return 2


def _ok(candidate: Mapping[str, Any]) -> bool:
    return candidate.get("status") == "ok" and _finite(candidate.get("val_accuracy")) is not None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _rank_key(candidate: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """Best first: higher validation accuracy, then F1, then fewer parameters (the search's own order)."""
    return (
        -(_finite(candidate.get("val_accuracy")) or -1.0),
        -(_finite(candidate.get("val_f1")) or -1.0),
        _finite(candidate.get("params")) or 0.0,
        candidate.get("index", 0),
    )


def curve_run_ids(summary: SearchSummary, count: int = CURVES_SHOWN) -> list[str]:
    """Runs whose learning curves the report shows: the best, the final model, then the top ``count`` ok candidates."""
    run_ids = [summary.best.mlflow_run_id if summary.best else None, _final_run_id(summary)]
    top = sorted((c for c in summary.candidates if _ok(c)), key=_rank_key)
    run_ids += [c.get("mlflow_run_id") for c in top[:count]]
    return [r for r in dict.fromkeys(run_ids) if isinstance(r, str) and r]


def _final_run_id(summary: SearchSummary) -> str | None:
    final = summary.final
    if isinstance(final, Mapping):
        return final.get("mlflow_run_id") or final.get("run_id")
    return None


def fetch_histories(tracking_uri: str, run_ids: Sequence[str]) -> dict[str, list[dict[str, float]]]:
    """Per-epoch ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_f1`` of MLflow runs, one dict per step (epoch).

    Runs without these metrics (or unknown to the store) are left out; an unreachable store raises.
    A SQLite store that does not exist is a ReportError, never created.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from nas_core.evaluation.worker import EPOCH_METRICS

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no MLflow store at {tracking_uri}")
    client = MlflowClient(tracking_uri)
    histories: dict[str, list[dict[str, float]]] = {}
    for run_id in dict.fromkeys(run_ids):
        steps: dict[int, dict[str, float]] = {}
        try:
            for key in EPOCH_METRICS:
                for metric in client.get_metric_history(run_id, key):
                    steps.setdefault(metric.step, {"epoch": float(metric.step)})[key] = metric.value
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        if steps:
            histories[run_id] = [steps[s] for s in sorted(steps)]
    return histories


# ---- formatting ---------------------------------------------------------------------------------
def _text(value: Any) -> str:
    """Escaped text of a value; an em dash for missing ones."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&mdash;"
    return escape(str(value))


def _fixed(value: Any, spec: str = ".4f") -> str:
    number = _finite(value)
    return "&mdash;" if number is None else format(number, spec)


def _accuracy(value: Any) -> str:
    return _fixed(value, ".4f")


def _count(value: Any) -> str:
    number = _finite(value)
    return "&mdash;" if number is None else f"{int(number):,}"


def _short_count(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return "&mdash;"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= size:
            return f"{number / size:.2f}{unit}"
    return f"{number:g}"


def _duration(seconds: Any) -> str:
    number = _finite(seconds)
    if number is None:
        return "&mdash;"
    minutes, secs = divmod(int(round(number)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``(dotted key, value)`` pairs; lists as JSON."""
    if isinstance(value, Mapping):
        pairs: list[tuple[str, Any]] = []
        for key, inner in value.items():
            pairs += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return pairs
    if isinstance(value, (list, tuple)):
        return [(prefix, json.dumps(value))]
    return [(prefix, value)]


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table; values are already HTML."""
    body = "".join(f"<tr><th>{escape(name)}</th><td>{html}</td></tr>" for name, html in rows)
    return f'<table class="facts">{body}</table>'


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_image(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


# ---- sections -----------------------------------------------------------------------------------
_OPTIONAL_SECTIONS = {"fidelity": "Fidelity", "final": "Final training", "proxy": "Zero-cost proxy", "timings": "Timings"}


def _summary_section(summary: SearchSummary) -> str:
    dataset = summary.dataset or {}
    best = summary.best
    candidates = summary.candidates
    failed = sum(c.get("status") != "ok" for c in candidates)
    rows = [
        ("dataset", f"{_text(dataset.get('name'))} <code>{_text(dataset.get('version'))}</code>"),
        ("strategy", _text(summary.strategy)),
        ("budget", f"{_text(summary.budget)} ({len(candidates)} trained, {failed} failed)"),
        ("seed", _text(summary.seed)),
        ("elapsed", _duration(summary.elapsed_seconds)),
    ]
    if best:
        rows += [
            ("best validation accuracy", _accuracy(best.val_accuracy)),
            ("best test accuracy", _accuracy(best.test_accuracy)),
            ("best parameters / FLOPs", f"{_count(best.params)} / {_short_count(best.flops)}"),
            ("best architecture hash", f"<code>{_text(best.hash)}</code>"),
            ("best MLflow run", f"<code>{_text(best.mlflow_run_id)}</code>"),
            ("ONNX model", f"<code>{_text(best.onnx_path)}</code>"),
        ]
        registry = best.registry
        if isinstance(registry, Mapping):
            name, version, alias = (_text(registry.get(k)) for k in ("name", "version", "alias"))
            rows.append(("registry", f"{name} v{version} ({alias})"))
    else:
        rows.append(("best", "none: every candidate failed"))
    rows += [
        ("MLflow tracking URI", f"<code>{_text(summary.mlflow_tracking_uri)}</code>"),
        ("MLflow experiment", _text(summary.mlflow_experiment)),
        ("MLflow search run", f"<code>{_text(summary.mlflow_run_id)}</code>"),
        ("open the MLflow UI", f"<code>{_text(summary.mlflow_ui)}</code>"),
    ]
    html = "<h2>Summary</h2>" + _facts(rows)
    for key, heading in _OPTIONAL_SECTIONS.items():
        value = getattr(summary, key)
        if value not in (None, {}, []):
            html += f"<h3>{heading}</h3>" + _facts([(name or key, _text(v)) for name, v in _flatten(value)])
    return html


_COLUMNS = (
    "#", "gen", "origin", "fidelity", "status", "reason", "val acc", "test acc",
    "params", "FLOPs", "proxy", "train s", "hash", "MLflow run",
)  # fmt: skip


def _cell(html: str) -> str:
    return f"<td>{html}</td>"


def _number_cell(html: str, value: Any) -> str:
    """A right-aligned cell sorted by ``value`` (missing values sort last)."""
    number = _finite(value)
    return f'<td class="num" data-sort="{"" if number is None else repr(number)}">{html}</td>'


def _pareto_section(summary: SearchSummary) -> str:
    """The models handed over from the accuracy/latency front (``export: pareto``), fastest first; empty without."""
    if not summary.pareto:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("hash", "val acc", "test acc", "predicted ms", "measured ms", "version", "aliases"))
    rows = []
    for m in summary.pareto:
        aliases = ", ".join((["best"] if m["best"] else []) + m["aliases"])
        cells = (_cell(escape(m["hash"][:12])), _number_cell(_accuracy(m["val_accuracy"]), m["val_accuracy"]),
                 _number_cell(_accuracy(m["test_accuracy"]), m["test_accuracy"]),
                 _number_cell(_fixed(m["predicted_latency_ms"]), m["predicted_latency_ms"]),
                 _number_cell(_fixed(m["measured_latency_ms"]), m["measured_latency_ms"]),
                 _cell(escape(str(m["registry_version"]))), _cell(escape(aliases)))  # fmt: skip
        rows.append(f"<tr>{''.join(cells)}</tr>")
    batch = summary.pareto[0]["latency_batch"]
    return (
        f"<h2>Handed over: the accuracy/latency front</h2><p>latency in milliseconds per call at batch {batch}, "
        f"measured on the exported ONNX models</p><table><tr>{head}</tr>{''.join(rows)}</table>"
    )


def _candidates_section(summary: SearchSummary) -> str:
    candidates = summary.candidates
    best_run = summary.best.mlflow_run_id if summary.best else None
    ordered = sorted((c for c in candidates if _ok(c)), key=_rank_key) + sorted(
        (c for c in candidates if not _ok(c)), key=lambda c: c.get("index", 0)
    )
    rows = []
    for c in ordered:
        css = "best" if best_run and c.get("mlflow_run_id") == best_run else ("" if c.get("status") == "ok" else "failed")
        full_hash = str(c.get("hash") or "")
        cells = [
            _number_cell(_text(c.get("index")), c.get("index")),
            _number_cell(_text(c.get("generation")), c.get("generation")),
            _cell(_text(c.get("origin"))),
            _number_cell(_text(c.get("fidelity")), c.get("fidelity")),
            _cell(_text(c.get("status"))),
            f'<td class="reason">{escape(str(c.get("reason") or ""))}</td>',
            _number_cell(_accuracy(c.get("val_accuracy")), c.get("val_accuracy")),
            _number_cell(_accuracy(c.get("test_accuracy")), c.get("test_accuracy")),
            _number_cell(_count(c.get("params")), c.get("params")),
            _number_cell(_short_count(c.get("flops")), c.get("flops")),
            _number_cell(_fixed(c.get("proxy"), ".4g"), c.get("proxy")),
            _number_cell(_fixed(c.get("train_seconds"), ".1f"), c.get("train_seconds")),
            f'<td title="{escape(full_hash)}"><code>{escape(full_hash[:10])}</code></td>',
            f"<td><code>{_text(c.get('mlflow_run_id'))}</code></td>",
        ]
        rows.append(f'<tr class="{css}">' + "".join(cells) + "</tr>")
    head = "".join(f"<th>{escape(name)}</th>" for name in _COLUMNS)
    return (
        f"<h2>Candidates ({len(candidates)})</h2><p>Sorted by validation accuracy (failed last); click a header to sort.</p>"
        f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _curves_section(summary: SearchSummary, histories: Mapping[str, Sequence[Mapping[str, float]]], folder: Path) -> str:
    by_run = {c.get("mlflow_run_id"): c for c in summary.candidates}
    final_run = _final_run_id(summary)
    shown = [r for r in dict.fromkeys([*curve_run_ids(summary), *histories]) if histories.get(r)]
    figures = []
    for number, run_id in enumerate(shown):
        c = by_run.get(run_id)
        if run_id == final_run:
            caption = f"final model (run {run_id})"
        elif c is not None:
            accuracy = _accuracy(c.get("val_accuracy"))
            caption = f"#{c.get('index')} {c.get('origin')}, {c.get('fidelity') or '?'} epochs, val acc {accuracy}"
        else:
            caption = f"run {run_id}"
        path = plots.learning_curves_png(histories[run_id], folder / f"curves_{number}.png", title=caption)
        figures.append(_figure(path, caption))
    if not figures:
        return ""
    return f'<h2>Learning curves</h2><div class="figures">{"".join(figures)}</div>'


def _architecture_section(summary: SearchSummary, output: Path, folder: Path) -> str:
    best = summary.best
    if best is None or not isinstance(best.genome, Mapping):
        return ""
    from nas_core.genome import Genome, GenomeError

    try:
        genome = Genome.from_dict(dict(best.genome))
        path = plots.architecture_png(genome, folder / "architecture.png", title="best architecture", dims=_space_dims(output))
    except GenomeError as exc:
        return f"<h2>Best architecture</h2><p>cannot draw the genome: {escape(str(exc))}</p>"
    genome_json = escape(json.dumps(best.genome))
    return (
        f'<h2>Best architecture</h2><div class="figures">{_figure(path, "best architecture")}'
        f"<details><summary>genome JSON</summary><pre>{genome_json}</pre></details></div>"
    )


_SEARCH_CAPTIONS = {
    "best_so_far": "validation accuracy over time; the line is the best so far",
    "accuracy_vs_cost": "accuracy vs parameters; circled: the Pareto front",
    "lineage": "lineage: which parent produced which child",
    "accuracy_vs_latency": "accuracy vs predicted latency; circled: the front; starred: the models handed over",
}


def write_report(
    output: Path,
    destination: Path | None = None,
    histories: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    summary: SearchSummary | None = None,
    search_plots: Mapping[str, Path] | None = None,
) -> Path:
    """Write the HTML report of the search in ``output`` (default ``output/report.html``); return its path.

    ``histories`` (MLflow run id -> per-epoch metric dicts, see :func:`fetch_histories`) adds learning curves.
    ``summary`` is the search's summary when the caller has it (else ``output/summary.json`` is read).
    ``search_plots`` are the summary's :func:`~nas_pipeline.plots.search_plots` when the caller drew them (else they
    are drawn here).
    """
    output = Path(output)
    summary = load_summary(output) if summary is None else summary
    destination = Path(destination) if destination is not None else output / REPORT_FILE
    search_id = str(summary.search_id or output.name)
    with tempfile.TemporaryDirectory(prefix="nas-report-") as scratch:
        folder = Path(scratch)
        search = plots.search_plots(summary, folder) if search_plots is None else search_plots
        figures = "".join(_figure(search[key], caption) for key, caption in _SEARCH_CAPTIONS.items() if key in search)
        body = [
            f"<h1>NAS search {escape(search_id)}</h1>",
            _summary_section(summary),
            _architecture_section(summary, output, folder),
            f'<h2>Search</h2><div class="figures">{figures}</div>',
            _pareto_section(summary),
            _curves_section(summary, histories or {}, folder),
            _candidates_section(summary),
            f"<p><small>written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {escape(str(output))}</small></p>",
        ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>NAS search {escape(search_id)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{_SCRIPT}</script>\n</body></html>\n"
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(page, encoding="utf-8")
    return destination


class HtmlReporter:
    """The search's :class:`~nas_core.search.ports.Reporter`: its PNGs under ``plots/`` and ``report.html``.

    Drawing never fails the search: an error becomes a warning.
    """

    def report(self, summary: SearchSummary) -> list[tuple[Path, str | None]]:
        output = summary.folder
        try:
            search = plots.search_plots(summary, output / PLOTS_DIR)
            write_report(output, output / REPORT_FILE, summary=summary, search_plots=search)
        except Exception as exc:
            if is_transient(exc):
                raise
            warnings.warn(f"could not draw the search's plots or report: {type(exc).__name__}: {exc}", stacklevel=2)
            return []
        return [(path, PLOTS_DIR) for path in search.values()]
