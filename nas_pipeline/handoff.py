"""Handoff bundle: a folder that needs nothing of this project to classify images with a search's best model.

``<dest>/``: ``model.onnx`` (a copy of the search's), ``model_card.json`` and ``model_card.md`` (input, exact
preprocessing, classes, metrics with the dataset version, genome and hash, size, onnxruntime latency as measured
and, when the search predicted it, as predicted, code version, provenance), ``predict.py`` (numpy + onnxruntime
only), ``requirements.txt`` and, when known, ``example_input.npy`` (a few test images with their labels and
predictions in the card).

Written at the end of every search (``<output>/handoff/``) and by ``nas export``, which rebuilds it from a
finished search's stored outputs without changing them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_core.latency import LATENCY_METRIC
from nas_core.provenance import TAG_PREFIX, Provenance
from nas_core.provenance import code_version as provenance_code_version
from nas_core.search.summary import SUMMARY_FILE, SearchSummary, SummaryError
from nas_pipeline.latency import NETWORK_TIMING, PROVIDER, Timing, machine_of, open_session, steady_ms_each

if TYPE_CHECKING:
    from nas_core.search.ports import ExportRequest
    from nas_pipeline.model_registry import Registration
    from nas_pipeline.onnx_export import ExportReport
    from nas_pipeline.quantization import QuantizationReport

Quantizer = Callable[[Path, "CardInputs", Path], "QuantizationReport"]  # (model.onnx, card inputs, scratch) -> report
CARD_FORMAT = 1
MODEL_FILE, CARD_JSON, CARD_MD, PREDICT_FILE = "model.onnx", "model_card.json", "model_card.md", "predict.py"
REQUIREMENTS_FILE, EXAMPLE_FILE = "requirements.txt", "example_input.npy"
HANDOFF_DIR = "handoff"  # inside a search's output folder
PREDICT_TEMPLATE = Path(__file__).with_name("predict_template.py")
PREPROCESSING_KEY = "nas.preprocessing"  # ONNX metadata: {"mean": [...], "std": [...], "input_range": [lo, hi], "resize": ...}
LATENCY_BATCH_SIZES = (1, 8, 64)
LATENCY_THREADS = 1  # pinned, as the search's latency predictor times with: the card's figures compare with it
EXAMPLE_SIZE = 8
METRIC_KEYS = ("val_accuracy", "val_f1", "test_accuracy", "test_f1")
SELECTION = "validation accuracy, then validation macro-F1, then fewer parameters; test metrics are only reported"


class HandoffError(ValueError):
    """A search output that cannot be exported, or a destination that cannot take the bundle."""


@dataclass(frozen=True)
class Preprocessing:
    """What callers do to an image before the model, and what the model does itself (the normalisation)."""

    mean: list[float]
    std: list[float]
    input_range: tuple[float, float] | None = (0.0, 1.0)  # None: float features with no fixed range
    dtype: str = "float32"
    layout: str | None = None  # None: from the model's input rank (NCHW for images, NCL for sequences)
    resize: dict[str, Any] | None = None  # how source images were resized (PreparedData.resize); None: not at all
    normalization_inside_model: bool = True


@dataclass(frozen=True)
class PredictedLatency:
    """The search's predicted latency of the model (``latency_ms``), and the settings it was predicted with."""

    ms: float
    batch_size: int  # latency_batch
    provider: str = PROVIDER  # latency_provider
    threads: int = LATENCY_THREADS  # latency_threads

    @classmethod
    def predicted(cls, metrics: dict[str, Any], request: ExportRequest) -> PredictedLatency | None:
        """From a candidate's metrics and the settings of the search exporting it; None when it predicted none."""
        settings = {"latency_batch": request.latency_batch, "latency_provider": request.latency_provider,
                    "latency_threads": request.latency_threads}  # fmt: skip
        return cls.of(metrics, settings)

    @classmethod
    def of(cls, metrics: dict[str, Any], config: dict[str, Any] | None) -> PredictedLatency | None:
        """From a candidate's metrics and its search's settings (``search.json``'s ``config``); None when the search
        predicted no latency or its settings are unknown."""
        value = metrics.get(LATENCY_METRIC)
        if not isinstance(value, int | float) or isinstance(value, bool) or config is None:
            return None
        from nas_core.config import SearchConfig

        def setting(name: str) -> Any:  # searches from before a setting existed ran with its default
            return config.get(name, SearchConfig.model_fields[name].default)

        return cls(float(value), int(setting("latency_batch")), str(setting("latency_provider")), int(setting("latency_threads")))


@dataclass(frozen=True)
class CardInputs:
    """Everything the model card says that the ONNX file itself does not."""

    search_id: str
    dataset: str
    dataset_version: str
    classes: list[str]
    preprocessing: Preprocessing
    metrics: dict[str, float | None]  # METRIC_KEYS
    genome: dict[str, Any]
    hash: str
    params: int
    flops: int
    onnx_max_abs_diff: float | None = None
    mlflow: dict[str, str] = field(default_factory=dict)
    registry: dict[str, Any] | None = None
    provenance: dict[str, str] = field(default_factory=dict)  # Provenance.tags(): the same keys as the ONNX metadata
    quantization: dict[str, Any] | None = None  # the int8 report (QuantizationReport.to_dict), when asked for
    predicted_latency: PredictedLatency | None = None  # the search's prediction, when it made one


# ---- measurements -------------------------------------------------------------------------------------------------
def measure_latency(
    model_path: Path,
    batch_sizes: tuple[int, ...] = LATENCY_BATCH_SIZES,
    timing: Timing = NETWORK_TIMING,
    threads: int = LATENCY_THREADS,
    provider: str = PROVIDER,
) -> dict[str, Any]:
    """Onnxruntime milliseconds per call for each batch size (:func:`~nas_pipeline.latency.steady_ms_each`: the lowest
    median of ``timing``'s rounds of calls), on ``provider`` with ``threads`` pinned intra-op threads; the machine
    (CPU, cores, runtime, provider, threads) and the timing are named with the figures.
    The provider named is the one the session runs on (onnxruntime falls back to the CPU for one it does not have)."""
    session = open_session(Path(model_path), threads, provider)
    per_batch = [
        {"batch_size": size, "median_ms": round(ms, 4), "per_input_ms": round(ms / size, 4)}
        for size, ms in steady_ms_each(session, batch_sizes, timing).items()
    ]
    machine = machine_of(threads, session.get_providers()[0])
    return {
        "runtime": machine.runtime,
        "provider": machine.provider,
        "threads": threads,
        "machine": machine.describe(),
        "machine_key": machine.key(),
        "timing": dataclasses.asdict(timing),
        "per_batch": per_batch,
    }


def _timing_text(timing: dict[str, Any]) -> str:
    return (
        f"the lowest median of {timing['rounds']} rounds of {timing['calls']} calls, {timing['gap_seconds']:g} s apart, "
        f"after {timing['warmup']} warm-up calls"
    )


def code_version() -> dict[str, Any]:
    """The code behind the model, as the provenance records it (git commit, dirty flag, package version)."""
    commit, dirty, package = provenance_code_version()
    return {"git_commit": commit, "git_dirty": dirty, "package_version": package}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_facts(path: Path) -> dict[str, Any]:
    """Input and output specs, opset and producer, read from the ONNX file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)

    def spec(value: Any) -> dict[str, Any]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        return {"name": value.name, "shape": dims, "dtype": dtype}

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    producer = f"{proto.producer_name} {proto.producer_version}".strip()
    return {"input": spec(proto.graph.input[0]), "output": spec(proto.graph.output[0]), "opset": opset, "producer": producer}


# ---- the model card -----------------------------------------------------------------------------------------------
def build_model_card(
    inputs: CardInputs,
    model_path: Path,
    latency: dict[str, Any],
    code: dict[str, Any],
    created_at: str,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card as plain data (``model_card.json``)."""
    facts = _model_facts(model_path)
    pre = inputs.preprocessing
    dims = [str(d) for d in facts["input"]["shape"][1:]]  # (C, H, W) for images
    layout = pre.layout or {3: "NCHW", 2: "NCL"}.get(len(dims), "N" + "?" * len(dims))
    norm = f"(x - mean[c]) / std[c] per channel c, mean={pre.mean}, std={pre.std}"
    size = "x".join(dims[1:]) + (" (height x width)" if len(dims) == 3 else "")
    resize_note = _resize_text(pre.resize, size)
    steps = [
        f"arrange inputs as {pre.dtype}, layout {layout}, shape (N, {', '.join(dims)})",
        f"pixel values in [{pre.input_range[0]:g}, {pre.input_range[1]:g}] (1 = full intensity)"
        if pre.input_range
        else "feature values as in the training data (no fixed range)",
        f"resize: {resize_note}",
        f"do not normalise: the model normalises internally with {norm}"
        if pre.normalization_inside_model
        else f"normalise: {norm}",
    ]
    metrics = inputs.metrics
    return {
        "format": CARD_FORMAT,
        "name": f"nas-{inputs.dataset} {inputs.hash[:12]}",
        "created_at": created_at,
        "model": {
            "file": MODEL_FILE,
            "sha256": _sha256(model_path),
            "bytes": model_path.stat().st_size,
            "opset": facts["opset"],
            "producer": facts["producer"],
            "max_abs_diff_vs_pytorch": inputs.onnx_max_abs_diff,
        },
        "input": {**facts["input"], "layout": layout, "range": _listed(pre.input_range)},
        "output": {
            **facts["output"],
            "meaning": "unnormalised class scores (logits); softmax gives probabilities, argmax the index into classes",
        },
        "preprocessing": {
            "steps": steps,
            "dtype": pre.dtype,
            "layout": layout,
            "input_range": _listed(pre.input_range),
            "resize": pre.resize,
            "resize_note": resize_note,
            "normalization": {
                "mean": pre.mean,
                "std": pre.std,
                "formula": "(x - mean[c]) / std[c]",
                "inside_model": pre.normalization_inside_model,
            },
            "integer_inputs": "predict.py divides integer arrays by --scale S (required for them); nothing else",
        },
        "classes": inputs.classes,
        "dataset": {"name": inputs.dataset, "version": inputs.dataset_version},
        "metrics": {
            "dataset_version": inputs.dataset_version,
            "validation": {"accuracy": metrics.get("val_accuracy"), "f1_macro": metrics.get("val_f1")},
            "test": {"accuracy": metrics.get("test_accuracy"), "f1_macro": metrics.get("test_f1")},
            "selection": SELECTION,
        },
        "architecture": {
            "hash": inputs.hash,
            "genome": inputs.genome,
            "params": inputs.params,
            "flops": inputs.flops,
            "flops_note": "for one input, counted by torch.utils.flop_counter",
        },
        "latency": {**latency, "predicted": _predicted_section(inputs.predicted_latency, latency)},
        "quantization": inputs.quantization,
        "example": example,
        "provenance": {
            "search_id": inputs.search_id,
            "mlflow": inputs.mlflow,
            "registry": inputs.registry,
            "code": code,
            "tags": inputs.provenance,
        },
    }


def _predicted_section(predicted: PredictedLatency | None, latency: dict[str, Any]) -> dict[str, Any] | None:
    """The search's predicted latency beside the measured one at its batch size, with the relative error
    ``(predicted - measured) / measured``; None without a prediction. No error when the two were timed on different
    providers or threads: such figures do not compare."""
    if predicted is None:
        return None
    measured = next((r["median_ms"] for r in latency["per_batch"] if r["batch_size"] == predicted.batch_size), None)
    comparable = (latency["provider"], latency["threads"]) == (predicted.provider, predicted.threads)
    error = (predicted.ms - measured) / measured if comparable and measured else None
    return {
        "batch_size": predicted.batch_size,
        "predicted_ms": predicted.ms,
        "measured_ms": measured,
        "relative_error": None if error is None else round(error, 4),
        "provider": predicted.provider,
        "threads": predicted.threads,
        "source": "the search's latency predictor (timed parts of the network, docs/latency.md)",
    }


def _predicted_lines(predicted: dict[str, Any] | None) -> list[str]:
    """The card's line on the search's prediction (nothing without one)."""
    if predicted is None:
        return []
    measured = "not measured" if predicted["measured_ms"] is None else f"{predicted['measured_ms']:.4f} ms measured"
    error = predicted["relative_error"]
    compared = (
        f"relative error {error:+.1%} ((predicted - measured) / measured)"
        if error is not None
        else f"not compared (predicted on {predicted['provider']}, {predicted['threads']} thread(s))"
    )
    return [
        f"Predicted by the search at batch size {predicted['batch_size']}: {predicted['predicted_ms']:.4f} ms per call; "
        f"{measured}; {compared}.",
        "",
    ]


def _resize_text(resize: dict[str, Any] | None, size: str) -> str:
    if not resize:
        return f"none: inputs must already be {size}; nothing resizes them"
    if "size" in resize:
        height, width = resize["size"]
        how = f"with {resize.get('filter', 'an unstated filter')}" + (
            "" if resize.get("keep_aspect", True) else ", aspect ratio not kept"
        )
        mode = f", converted to {resize['mode']}" if resize.get("mode") else ""
        return f"resize every image to {height}x{width} (height x width) {how}{mode}, as the training data was"
    return f"as the training data was: {json.dumps(resize, sort_keys=True)}"


def preprocessing_metadata(data: Any) -> str:
    """The ONNX metadata value under PREPROCESSING_KEY for prepared data: normalisation, input range, resizing."""
    input_range = _listed(getattr(data, "input_range", (0.0, 1.0)))
    resize = getattr(data, "resize", None)
    return json.dumps({"mean": list(data.mean), "std": list(data.std), "input_range": input_range, "resize": resize})


def _shape(dims: list[Any]) -> str:
    return f"({', '.join(str(d) for d in dims)})"


def _genome_lines(genome: dict[str, Any]) -> list[str]:
    """One line per node: ``- n0: conv (kernel 3, channels 32, stride 1) <- input``."""
    sources: dict[str, list[str]] = {}
    for src, dst in genome.get("edges", []):
        sources.setdefault(dst, []).append(src)
    lines = []
    for node in genome.get("nodes", []):
        if node["op"] == "input":
            continue
        settings = ", ".join(f"{k} {v}" for k, v in (node.get("settings") or {}).items())
        op = node["op"] + (f" ({settings})" if settings else "")
        lines.append(f"- `{node['id']}`: {op} <- {', '.join(sources.get(node['id'], [])) or 'nothing'}")
    hparams = genome.get("hparams")
    if hparams:
        lines.append(f"- training hyperparameters: {', '.join(f'{k}={v}' for k, v in hparams.items())}")
    return lines


def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _quantization_lines(report: dict[str, Any] | None) -> list[str]:
    """The card's int8 section: kept or why not, accuracy and latency before and after (nothing when not asked for)."""
    if report is None:
        return []
    latency = [
        f"| {batch} | {t['fp32']:.3f} | {t['int8']:.3f} | {t['speedup']:.2f}x |" for batch, t in report["latency_ms"].items()
    ]
    use = f"`python predict.py images.npy --model {report['file']}`" if report["file"] else "not in this bundle"
    return [
        "## int8 model",
        "",
        f"- {report['reason']}; {report['method']}; calibrated on {report['calibration']}",
        f"- test accuracy: float {report['test_accuracy_fp32']:.4f}, int8 {report['test_accuracy_int8']:.4f}; use it: {use}",
        "",
        "| batch size | float ms | int8 ms | speed-up |",
        "| --- | --- | --- | --- |",
        *latency,
        "",
    ]


def render_markdown(card: dict[str, Any]) -> str:
    """``model_card.md``: the card for people, with commands to paste."""
    pre, inp, out, m = card["preprocessing"], card["input"], card["output"], card["metrics"]
    arch, lat, prov = card["architecture"], card["latency"], card["provenance"]
    code, registry = prov["code"], prov["registry"]
    commit = code["git_commit"] or "unknown (not a git checkout)"
    if code["git_dirty"]:
        commit += " (with uncommitted changes)"
    diff = card["model"]["max_abs_diff_vs_pytorch"]
    parity = "not measured" if diff is None else f"{diff:.2e}"
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"Classifier over {len(card['classes'])} classes of `{card['dataset']['name']}`, found by neural architecture "
        f"search `{prov['search_id']}`. Created {card['created_at']}.",
        "",
        "## Input",
        "",
        f"- name `{inp['name']}`, dtype `{inp['dtype']}`, shape `{_shape(inp['shape'])}` ({inp['layout']}), values "
        + (f"in [{inp['range'][0]:g}, {inp['range'][1]:g}]" if inp["range"] else "as in the training data (no fixed range)"),
        "",
        "## Preprocessing (exactly this, in this order)",
        "",
        *[f"{i}. {step}" for i, step in enumerate(pre["steps"], 1)],
        "",
        f"Integer images: {pre['integer_inputs']}.",
        "",
        "## Output",
        "",
        f"- name `{out['name']}`, dtype `{out['dtype']}`, shape `{_shape(out['shape'])}`: {out['meaning']}",
        f"- classes (index: label): {', '.join(f'{i}: {c}' for i, c in enumerate(card['classes']))}",
        "",
        f"## Metrics (dataset `{card['dataset']['name']}` version `{m['dataset_version']}`)",
        "",
        "| split | accuracy | macro-F1 |",
        "| --- | --- | --- |",
        f"| validation | {_fmt(m['validation']['accuracy'])} | {_fmt(m['validation']['f1_macro'])} |",
        f"| test | {_fmt(m['test']['accuracy'])} | {_fmt(m['test']['f1_macro'])} |",
        "",
        f"Selected on {m['selection']}.",
        "",
        "## Architecture",
        "",
        f"- genome hash `{arch['hash']}`",
        f"- {arch['params']:,} parameters, {arch['flops']:,} FLOPs ({arch['flops_note']})",
        f"- ONNX opset {card['model']['opset']}, {card['model']['bytes']:,} bytes, sha256 `{card['model']['sha256']}`; "
        f"max |logit difference| vs PyTorch {parity}",
        "",
        "Genome (each op with its settings and inputs; several inputs are summed):",
        "",
        *_genome_lines(arch["genome"]),
        "",
        f"## Latency on {lat['machine']} ({_timing_text(lat['timing'])})",
        "",
        "| batch size | ms per call | ms per input |",
        "| --- | --- | --- |",
        *[f"| {r['batch_size']} | {r['median_ms']:.3f} | {r['per_input_ms']:.4f} |" for r in lat["per_batch"]],
        "",
        *_predicted_lines(lat.get("predicted")),
        *_quantization_lines(card.get("quantization")),
        "## Use it",
        "",
        "Needs Python 3 with numpy and onnxruntime only (`pip install -r requirements.txt`), nothing else of the project:",
        "",
        "```bash",
        "python predict.py images.npy                        # JSON: label, class index and probabilities per image",
        "python predict.py images.npy --output predictions.csv",
        "python predict.py images_uint8.npy --scale 255     # integer images: divided by --scale, nothing else",
        "```",
        "",
    ]
    if card["example"]:
        ex = card["example"]
        lines += [
            f"`python predict.py {ex['file']}` should predict {ex['predicted']} (true labels {ex['labels']}).",
            "",
        ]
    lines += [
        "## Provenance",
        "",
        f"- search `{prov['search_id']}`; code {commit}, package version {code['package_version'] or 'unknown'}",
        *[f"- MLflow {key.replace('_', ' ')}: `{value}`" for key, value in prov["mlflow"].items()],
    ]
    if registry:
        state = "champion" if registry["promoted"] else "not promoted"
        lines.append(f"- registry: `{registry['model_uri']}` ({state}: {registry['reason']})")
    return "\n".join(lines) + "\n"


# ---- the bundle ---------------------------------------------------------------------------------------------------
def _check_destination(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise HandoffError(f"'{dest}' exists and is not a folder; pass another --output")
    if dest.is_dir() and any(dest.iterdir()):
        raise HandoffError(f"'{dest}' is not empty; pass a new or empty folder as --output")


def _example_section(model_path: Path, example: np.ndarray, labels: list[str] | None, classes: list[str]) -> dict[str, Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: example})[0]
    return {"file": EXAMPLE_FILE, "labels": labels, "predicted": [classes[int(k)] for k in logits.argmax(axis=1)]}


def _measure_for(model: Path, predicted: PredictedLatency | None) -> dict[str, Any]:
    """The card's latency: at its batch sizes (and the prediction's), on the prediction's provider and threads."""
    if predicted is None:
        return measure_latency(model)
    sizes = tuple(sorted({*LATENCY_BATCH_SIZES, predicted.batch_size}))
    return measure_latency(model, sizes, threads=predicted.threads, provider=predicted.provider)


def write_bundle(
    onnx_path: Path,
    inputs: CardInputs,
    dest: Path,
    example: np.ndarray | None = None,
    example_labels: list[str] | None = None,
    replace: bool = False,
    int8_model: Path | None = None,
) -> Path:
    """Write the bundle to ``dest`` (new or empty, or replaced when ``replace``); all or nothing. ``int8_model`` goes
    beside ``model.onnx`` under its own name; ``predict.py --model`` takes either."""
    dest = Path(dest).resolve()
    if not replace:
        _check_destination(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise HandoffError(f"cannot write the bundle to '{dest}' ({exc.strerror}); pass a writable --output") from None
    try:
        model = tmp / MODEL_FILE
        shutil.copyfile(onnx_path, model)
        if int8_model is not None:
            shutil.copyfile(int8_model, tmp / int8_model.name)
        shutil.copyfile(PREDICT_TEMPLATE, tmp / PREDICT_FILE)
        os.chmod(tmp / PREDICT_FILE, 0o755)
        import onnxruntime as ort

        tested = f"numpy {np.__version__}, onnxruntime {ort.__version__}"
        (tmp / REQUIREMENTS_FILE).write_text(f"# predict.py needs only these (tested with {tested})\nnumpy\nonnxruntime\n")
        section = None
        if example is not None and len(example):
            example = np.ascontiguousarray(example, dtype=np.float32)
            np.save(tmp / EXAMPLE_FILE, example)
            section = _example_section(model, example, example_labels, inputs.classes)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        card = build_model_card(inputs, model, _measure_for(model, inputs.predicted_latency), code_version(), created, section)
        (tmp / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / CARD_MD).write_text(render_markdown(card))
        os.chmod(tmp, 0o755)
        if dest.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
            os.replace(dest, old / dest.name)  # swap out the previous (or empty) folder, then drop it
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except OSError as exc:
        raise HandoffError(f"cannot write the bundle to '{dest}': {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def write_search_bundle(
    request: ExportRequest,
    report: ExportReport,
    registration: Registration | None,
    tracking_uri: str,
    int8: QuantizationReport | None = None,
) -> Path:
    """The bundle of a search that just exported its best model (and its int8 model, when kept), in ``<output>/handoff/``."""
    best, data, provenance = request.best, request.data, request.provenance
    inputs = CardInputs(
        provenance=provenance.tags(),
        search_id=provenance.search_id,
        dataset=provenance.dataset,
        dataset_version=provenance.dataset_version,
        classes=list(data.classes),
        preprocessing=_preprocessing(json.loads(preprocessing_metadata(data))),
        metrics={k: request.metrics.get(k) for k in METRIC_KEYS},
        genome=best.genome.to_dict(),
        hash=best.hash,
        params=int(best.metrics["params"]),
        flops=int(best.metrics["flops"]),
        onnx_max_abs_diff=report.max_abs_diff,
        mlflow={
            "tracking_uri": tracking_uri,
            "search_run_id": request.search_run_id,
            "candidate_run_id": best.mlflow_run_id,
            **({"final_run_id": provenance.final_run_id} if provenance.final_run_id else {}),
        },
        registry=registration.to_dict() if registration else None,
        quantization=int8.to_dict() if int8 else None,
        predicted_latency=PredictedLatency.predicted(best.metrics, request),
    )
    labels = [data.classes[int(k)] for k in data.y["test"][:EXAMPLE_SIZE]]
    for leftover in request.output.glob(f".{HANDOFF_DIR}.*"):  # half-written bundles of a killed export
        shutil.rmtree(leftover, ignore_errors=True)
    int8_model = request.output / int8.file if int8 and int8.file else None
    return write_bundle(
        report.path, inputs, request.output / HANDOFF_DIR, data.x["test"][:EXAMPLE_SIZE], labels, replace=True,
        int8_model=int8_model,
    )  # fmt: skip


# ---- from a finished search's stored outputs ----------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HandoffError(f"'{path.parent}' has no {path.name}: {what}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise HandoffError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise HandoffError(f"{path} is not a JSON object")
    return data


def _best_candidate(summary: SearchSummary) -> dict[str, Any]:
    """The best's row among the summary's candidates, with its logged metrics (``latency_ms``); {} when none is."""
    best = summary.best
    assert best is not None
    rows = (c for c in summary.candidates if (c.get("hash"), c.get("mlflow_run_id")) == (best.hash, best.mlflow_run_id))
    return next(rows, {})


def _preprocessing(stored: dict[str, Any]) -> Preprocessing:
    """A :class:`Preprocessing` from :func:`preprocessing_metadata`'s JSON."""
    stored_range = stored.get("input_range", (0.0, 1.0))
    input_range = None if stored_range is None or None in stored_range else (float(stored_range[0]), float(stored_range[1]))
    return Preprocessing(list(stored["mean"]), list(stored["std"]), input_range, resize=stored.get("resize"))


def _listed(input_range: tuple[float, float] | None) -> list[float] | None:
    return list(input_range) if input_range is not None else None


def _stored_preprocessing(metadata: dict[str, str], project_dir: Path, dataset: str, version: str) -> Preprocessing:
    """From the model's metadata; for models exported before it was recorded, from the project's prepared data
    when ``data.dvc`` still records the model's dataset version."""
    from nas_core.data.preparation import DatasetError, load_prepared
    from nas_pipeline import dvc_versioning as versioning

    if PREPROCESSING_KEY in metadata:
        return _preprocessing(json.loads(metadata[PREPROCESSING_KEY]))
    try:
        if versioning.tracked_version(project_dir) == version:
            return _preprocessing(json.loads(preprocessing_metadata(load_prepared(project_dir / versioning.DATA_DIR, dataset))))
    except (versioning.VersioningError, DatasetError):
        pass
    raise HandoffError(
        f"model.onnx records no normalisation ({PREPROCESSING_KEY}) and {project_dir}/data does not hold dataset version "
        f"{version} to read it from; check that version out (`git checkout` of data.dvc, then `dvc checkout`) and retry"
    )


def _stored_example(folder: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """The example images (and labels) of the search's own bundle, when it has one."""
    try:
        example = np.load(folder / HANDOFF_DIR / EXAMPLE_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return None, None
    try:
        labels = json.loads((folder / HANDOFF_DIR / CARD_JSON).read_text())["example"]["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        labels = None
    return example, labels if isinstance(labels, list) and len(labels) == len(example) else None


def _stored_summary(folder: Path, search_id: str) -> SearchSummary:
    """The finished search's summary.json as its record; HandoffError when it is missing, damaged or of another format."""
    path = folder / SUMMARY_FILE
    try:
        return SearchSummary.read(folder)
    except SummaryError as exc:
        if not path.exists():
            raise HandoffError(
                f"'{folder}' has no {SUMMARY_FILE}: search {search_id} has not finished; export a finished one"
            ) from None
        raise HandoffError(str(exc) if str(exc).startswith("cannot read") else f"{path} is not a search summary: {exc}") from None


def card_inputs_from_output(folder: Path) -> tuple[CardInputs, Path]:
    """What the card needs, read from a finished search's output folder (search.json, summary.json, model.onnx).

    The model's identity (search, dataset and its version, hash, run ids) comes from its own ONNX metadata; the
    summary says which model is the best (its hash must match) and holds its metrics, genome and registration.
    """
    from nas_pipeline.onnx_export import read_metadata

    folder = Path(folder)
    saved = _read_json(folder / "search.json", "pass a search's output folder or its search id")
    summary = _stored_summary(folder, saved.get("search_id", "?"))
    best = summary.best
    if best is None:
        raise HandoffError(f"search {summary.search_id} has no model: every candidate failed")
    model = folder / MODEL_FILE
    if not best.onnx_path or not model.is_file():
        raise HandoffError(f"search {summary.search_id} has no {MODEL_FILE}: {_no_model_reason(summary, model)}")
    try:
        metadata = read_metadata(model)
    except Exception as exc:  # onnx raises several types for a damaged file
        raise HandoffError(f"cannot read {model}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    provenance = Provenance.from_tags(metadata)
    if provenance.hash != best.hash:
        raise HandoffError(f"{model} is not the best model of summary.json (hash {provenance.hash} vs {best.hash})")
    missing = [f"{TAG_PREFIX}{k}" for k in ("search_id", "dataset", "dataset_version") if getattr(provenance, k) is None]
    if missing:
        raise HandoffError(f"{model} records no {', '.join(missing)} in its metadata; it was not exported by a search")
    project_dir = Path(saved["config"].get("project_dir", "."))
    preprocessing = _stored_preprocessing(metadata, project_dir, provenance.dataset, provenance.dataset_version)
    run_ids = {
        "search_run_id": provenance.search_run_id,
        "candidate_run_id": provenance.candidate_run_id,
        "final_run_id": provenance.final_run_id,
    }
    inputs = CardInputs(
        provenance=provenance.tags(),
        search_id=provenance.search_id,
        dataset=provenance.dataset,
        dataset_version=provenance.dataset_version,
        classes=[str(c) for c in json.loads(metadata.get("nas.classes", "null"))]
        if "nas.classes" in metadata
        else [str(i) for i in range(_model_facts(model)["output"]["shape"][-1])],
        preprocessing=preprocessing,
        metrics={k: getattr(best, k) for k in METRIC_KEYS},
        genome=best.genome,
        hash=best.hash,
        params=int(best.params),
        flops=int(best.flops),
        onnx_max_abs_diff=best.onnx_max_abs_diff,
        mlflow={"tracking_uri": summary.mlflow_tracking_uri, **{k: v for k, v in run_ids.items() if v is not None}},
        registry=best.registry,
        predicted_latency=PredictedLatency.of(_best_candidate(summary), saved.get("config")),
    )
    return inputs, model


def _no_model_reason(summary: SearchSummary, model: Path) -> str:
    """Why a finished search has no model file, as its summary tells it."""
    assert summary.best is not None
    if summary.best.model_error:
        return f"{summary.best.model_error} (the best genome is in summary.json; search again to train it)"
    if summary.dataset.get("name", "").startswith("table:"):
        return "searches on benchmark tables train nothing"
    if summary.best.onnx_path:
        return f"{model} was removed after the search exported it"
    return "the search exported no model"


def export_search(folder: Path, dest: Path, int8: Quantizer | None = None) -> Path:
    """Write the bundle of the finished search in ``folder`` to ``dest`` (new or empty); ``folder`` is only read.

    ``int8(model, inputs, scratch)`` quantizes the model into the ``scratch`` folder (see
    :func:`nas_pipeline.quantization.stored_quantizer`); its report goes into the card, its model into the bundle
    when kept.
    """
    dest = Path(dest).resolve()
    _check_destination(dest)  # before any work
    inputs, model = card_inputs_from_output(folder)
    example, labels = _stored_example(Path(folder))
    with tempfile.TemporaryDirectory() as scratch:
        int8_model = None
        if int8 is not None:
            report = int8(model, inputs, Path(scratch))
            inputs = dataclasses.replace(inputs, quantization=report.to_dict())
            int8_model = Path(scratch) / report.file if report.file else None
        return write_bundle(model, inputs, dest, example, labels, int8_model=int8_model)
