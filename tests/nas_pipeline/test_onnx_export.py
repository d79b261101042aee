"""ONNX export of a genome's model: checker, PyTorch parity, dynamic batch, metadata and atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nas_core.builder import build_model
from nas_core.genome import Genome
from nas_pipeline.onnx_export import INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx, read_metadata

METADATA = {"genome_hash": "abc123", "dataset": "digits", "val_accuracy": "0.97", "note": "exported by the tests"}


def genome() -> Genome:
    """A small cell with a skip connection and a reduction, so the shape aligners are exported too."""
    return Genome.from_dict(
        {
            "nodes": [
                {"id": "input", "op": "input"},
                {"id": "a", "op": "conv", "settings": {"kernel": 3, "channels": 16, "stride": 1}},
                {"id": "b", "op": "sepconv", "settings": {"kernel": 3, "channels": 24, "stride": 2}},
                {"id": "output", "op": "output"},
            ],
            "edges": [["input", "a"], ["a", "b"], ["input", "b"], ["b", "output"]],
        }
    ).validate()


@pytest.fixture(scope="module")
def model(digits):
    torch.manual_seed(0)
    net = build_model(genome(), digits.input_shape, digits.num_classes, digits.mean, digits.std)
    net.train()
    with torch.no_grad():  # move batch-norm running statistics away from their defaults
        net(torch.from_numpy(digits.x["train"][:256]))
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, digits):
    folder = tmp_path_factory.mktemp("export")
    path = folder / "model.onnx"
    report = export_onnx(model, path, digits.x["test"][:128], METADATA)
    return path, report


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_export_writes_the_file_and_reports_parity(exported):
    path, report = exported
    assert path.is_file()
    assert report.path == path
    assert report.samples == 128
    assert 0.0 <= report.max_abs_diff <= 1e-4
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp files left behind


def test_exported_model_passes_the_onnx_checker(exported):
    path, _ = exported
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # symbolic, not a fixed size
    assert not batch_dim.HasField("dim_value")


@pytest.mark.parametrize("batch", [1, 7, 200])
def test_onnxruntime_accepts_any_batch_size_and_matches_pytorch(exported, model, digits, batch):
    path, _ = exported
    x = np.ascontiguousarray(digits.x["test"][:batch], dtype=np.float32)
    assert len(x) == batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    assert logits.shape == (batch, digits.num_classes)
    np.testing.assert_allclose(logits, _torch_logits(model, x), rtol=0, atol=1e-4)


def test_read_metadata_returns_the_metadata_passed_in(exported):
    path, _ = exported
    assert read_metadata(path) == METADATA


def test_no_inputs_raise_and_write_nothing(tmp_path, model, digits):
    path = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportError, match="at least 1 input"):
        export_onnx(model, path, digits.x["test"][:0], METADATA)
    assert not path.exists()
    assert not path.parent.exists() or list(path.parent.iterdir()) == []


def test_one_input_is_enough_and_the_batch_axis_stays_dynamic(tmp_path, model, digits):
    """A tiny dataset: parity on the single sample there is; the model still takes any batch size."""
    path = tmp_path / "model.onnx"
    report = export_onnx(model, path, digits.x["test"][:1], METADATA)
    assert report.samples == 1 and 0.0 <= report.max_abs_diff <= 1e-4
    x = np.ascontiguousarray(digits.x["test"][:5], dtype=np.float32)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    np.testing.assert_allclose(logits, _torch_logits(model, x), rtol=0, atol=1e-4)


def test_the_model_is_readable_by_everyone_and_a_killed_export_leftover_is_replaced(tmp_path, model, digits):
    path = tmp_path / "model.onnx"
    (tmp_path / ".model.onnx.tmp").write_bytes(b"")  # what a SIGKILL during an earlier export leaves
    export_onnx(model, path, digits.x["test"][:64], METADATA)
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_exactly_64_inputs_are_enough_and_replace_an_existing_file(tmp_path, model, digits):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older model")
    report = export_onnx(model, path, digits.x["test"][:64], {"epochs": 3})
    assert report.samples == 64
    assert path.read_bytes() != b"an older model"
    onnx.checker.check_model(str(path))
    assert read_metadata(path) == {"epochs": "3"}
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_failed_export_leaves_the_existing_file_untouched(tmp_path, model, digits):
    path = tmp_path / "model.onnx"
    previous = b"the previous, good model bytes"
    path.write_bytes(previous)
    with pytest.raises(ExportError, match="differ"):
        export_onnx(model, path, digits.x["test"][:128], METADATA, tolerance=-1.0)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_parity_inputs_top_up_a_small_test_split_from_the_others(digits):
    from dataclasses import replace

    from nas_pipeline.exporting import parity_inputs

    small = replace(digits, x={"train": digits.x["train"][:50], "val": digits.x["val"][:3], "test": digits.x["test"][:2]})
    inputs = parity_inputs(small)
    assert len(inputs) == 55  # everything there is: fewer than 64
    np.testing.assert_array_equal(inputs[:2], digits.x["test"][:2])  # the test split first
    assert np.array_equal(parity_inputs(digits), digits.x["test"])  # a test split of 64 or more: all of it, nothing else


def test_an_export_error_is_the_core_s_model_export_error():
    from nas_core.search.ports import ModelExportError

    assert issubclass(ExportError, ModelExportError)


def test_failed_export_to_a_new_path_creates_no_file(tmp_path, model, digits):
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError):
        export_onnx(model, path, digits.x["test"][:128], METADATA, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_the_exporter_s_registry_is_built_once_for_many_exports(tmp_path, model, digits, monkeypatch):
    from torch.onnx._internal._lazy_import import onnxscript_apis

    from nas_pipeline import onnx_export

    builds = []
    build = onnxscript_apis.get_torchlib_ops
    monkeypatch.setattr(onnx_export, "_registries", {}, raising=False)  # as in a fresh process
    monkeypatch.setattr(onnxscript_apis, "get_torchlib_ops", lambda: builds.append(1) or build())
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    export_onnx(model, tmp_path / "a.onnx", digits.x["test"][:8], METADATA)
    export_onnx(other, tmp_path / "b.onnx", digits.x["test"][:8], METADATA)
    assert len(builds) == 1
    assert read_metadata(tmp_path / "b.onnx") == METADATA


def test_each_export_gets_its_own_copy_of_the_kept_registry_equal_to_a_fresh_one(model, digits, tmp_path):
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    export_onnx(model, tmp_path / "a.onnx", digits.x["test"][:8], METADATA)  # keeps registries from here on
    first = ONNXRegistry.from_torchlib()
    one, another = list(first.functions)[:2]
    first.functions[one].clear()  # what an export's custom translations would change
    del first.functions[another]
    second = ONNXRegistry.from_torchlib()
    fresh = ONNXRegistry.from_torchlib.__wrapped__(ONNXRegistry, second.opset_version)

    def functions(registry):
        return {target: [meta.onnx_function for meta in metas] for target, metas in registry.functions.items()}

    assert second is not first and functions(second) == functions(fresh) and len(functions(second)) > 100
