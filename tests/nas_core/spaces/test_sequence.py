"""The 1D ``sequence`` space: genomes stay valid, build Conv1d/pool/BN-1d networks of any length, cost and
export to ONNX with rank-3 inputs; a search picks it for N x C x L data and refuses a space that does not fit."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from flows.cli import EXIT_USAGE, main
from nas_core.builder import build_model
from nas_core.config import SearchConfig
from nas_core.data.preparation import DatasetError
from nas_core.genome import Genome, Node
from nas_core.metrics import count_flops, count_params
from nas_core.ops import OPS, OpSettingsError
from nas_core.search.setup import fit_space_to_data
from nas_core.spaces import SPACES, create_space
from nas_core.spaces.sequence import SequenceSpace
from nas_pipeline.onnx_export import export_onnx

SPACE = create_space("sequence")
SEQUENCE_OPS = ("conv", "sepconv", "maxpool", "avgpool", "identity")
TWO_D = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def genome(nodes, edges) -> Genome:
    return Genome(
        (Node("input", "input"), *(Node(i, op, s) for i, op, s in nodes), Node("output", "output")), tuple(edges)
    ).validate()


def write_sequences(path, n: int = 350, channels: int = 2, length: int = 24) -> None:
    """A learnable sequence task: the class sets the frequency of a sine in channel 0, plus noise."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 5
    t = np.arange(length)
    x = rng.normal(0.0, 0.3, size=(n, channels, length)).astype(np.float32)
    x[:, 0] += np.sin(np.outer(y + 1, t) * 2 * np.pi / length).astype(np.float32)
    np.savez(path, x=x, y=y, classes=np.array(["a", "b", "c", "d", "e"]))


def test_registered_with_its_own_defaults_and_dimensionality():
    assert isinstance(SPACE, SequenceSpace) and SPACES["sequence"] is SequenceSpace
    assert SPACE.name == "sequence" and SPACE.input_ndim == 1 and SPACE.kernels == (3, 5, 7)
    assert set(SPACE.ops) == set(SEQUENCE_OPS)
    assert create_space("sequence", min_nodes=3, max_nodes=4).max_nodes == 4


@pytest.mark.parametrize("seed", range(25))
def test_genomes_stay_valid_and_build_1d_networks_of_any_length(seed):
    rng = random.Random(seed)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    children = [SPACE.mutate(a, rng), SPACE.crossover(a, b, rng)]
    assert children[0].canonical_hash() != a.canonical_hash()
    for g in (a, b, *children):
        g.validate()
        assert all(n.settings.get("kernel", 3) in (3, 5, 7) for n in g.nodes)
    length = rng.choice([1, 5, 24, 37])
    model = SPACE.build(a, (3, length), 4, [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    assert not any(isinstance(m, TWO_D) for m in model.modules())
    assert any(isinstance(m, nn.Conv1d) for m in model.modules())
    out = model(torch.randn(2, 3, length))
    assert out.shape == (2, 4) and torch.isfinite(out).all()


def test_neighbours_identity_encode_enumerate_describe():
    g = SPACE.sample(random.Random(1))
    neighbours = SPACE.neighbours(g)
    assert neighbours and all(SPACE.identity(n) != SPACE.identity(g) for n in neighbours)
    assert len({SPACE.identity(n) for n in neighbours}) == len(neighbours)
    assert SPACE.encode(g).dtype == np.float32 and SPACE.encode(g).shape == SPACE.encode(neighbours[0]).shape
    assert SPACE.enumerate() is None
    assert SPACE.describe(g)["num_nodes"] == len(g.nodes) - 2


@pytest.mark.parametrize("name", SEQUENCE_OPS)
@pytest.mark.parametrize("length", [1, 7, 8])
def test_every_sequence_op_builds_in_1d(name, length):
    spec = OPS[name]
    for values in _settings(name):
        module = spec.build(4, values, dims=1)
        y = module(torch.randn(2, 4, length))
        stride = spec.stride(values)
        assert tuple(y.shape) == (2, spec.out_channels(4, values), math.ceil(length / stride))
        assert not any(isinstance(m, TWO_D) for m in module.modules())


def _settings(name: str) -> list[dict]:
    import itertools

    spec = OPS[name].settings
    choices = [(1, 8) if allowed is None else allowed for allowed in spec.values()]
    return [dict(zip(spec, values, strict=True)) for values in itertools.product(*choices)]


def test_ops_without_a_1d_version_say_so():
    with pytest.raises(OpSettingsError, match="'nor_conv_3x3' has no 1D"):
        OPS["nor_conv_3x3"].build(4, {}, dims=1)
    g = genome([("n0", "nor_conv_3x3", {})], [("input", "n0"), ("n0", "output")])
    with pytest.raises(OpSettingsError, match="no 1D"):
        build_model(g, (2, 16), 3)


def test_skip_connections_are_aligned_by_1d_pooling_and_projection():
    g = genome(
        [("n0", "conv", {"kernel": 3, "channels": 32, "stride": 2}), ("n1", "maxpool", {"kernel": 3, "stride": 2})],
        [("input", "n0"), ("n0", "n1"), ("input", "n1"), ("n1", "output"), ("n0", "output")],
    )
    model = build_model(g, (2, 37), 3)
    assert model.shapes["n0"] == (32, 19) and model.shapes["n1"] == (32, 10) and model.output_shape == (32, 10)
    aligners = [m for m in model.edge_modules.modules() if isinstance(m, (nn.AvgPool1d, nn.Conv1d))]
    assert {type(m) for m in aligners} == {nn.AvgPool1d, nn.Conv1d}
    assert model(torch.randn(3, 2, 37)).shape == (3, 3)
    assert model.normalize.mean.shape == (1, 2, 1)


def test_cost_is_the_flop_counters_and_matches_the_conv_arithmetic():
    g = genome([("n0", "conv", {"kernel": 3, "channels": 16, "stride": 1})], [("input", "n0"), ("n0", "output")])
    cost = SPACE.cost(g, (2, 32), 3)
    model = build_model(g, (2, 32), 3)
    assert cost == {"params": count_params(model), "flops": count_flops(model, (2, 32))}
    stem, conv, linear = 2 * 2 * 16 * 3 * 32, 2 * 16 * 16 * 3 * 32, 2 * 16 * 3  # 2 x MACs
    assert cost["flops"] == stem + conv + linear
    with pytest.raises(ValueError, match=r"\(C, L\) inputs"):
        SPACE.cost(g, (1, 8, 8), 3)


def test_onnx_export_of_a_1d_model_has_a_dynamic_batch_and_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = SPACE.build(SPACE.sample(random.Random(3)), (2, 24), 5, [0.5, -0.5], [2.0, 0.5]).eval()
    inputs = np.random.default_rng(0).normal(size=(64, 2, 24)).astype(np.float32)
    report = export_onnx(model, tmp_path / "seq.onnx", inputs, {"nas.kind": "sequence"})
    assert report.max_abs_diff <= 1e-4
    proto = onnx.load(str(tmp_path / "seq.onnx"))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [2, 24]
    session = ort.InferenceSession(str(tmp_path / "seq.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs[:7])).numpy()
    np.testing.assert_allclose(session.run(None, {"input": inputs[:7]})[0], expected, atol=1e-4)


# ---- choosing the space by the data --------------------------------------------------------------
def test_the_default_space_follows_the_data_and_an_explicit_mismatch_is_an_error(tmp_path):
    write_sequences(tmp_path / "seq.npz", n=20)
    seq = f"npz:{tmp_path / 'seq.npz'}"
    assert fit_space_to_data(SearchConfig(dataset=seq)).space == "sequence"
    assert fit_space_to_data(SearchConfig(dataset=seq, space="sequence")).space == "sequence"
    assert fit_space_to_data(SearchConfig()).space == "image"
    with pytest.raises(DatasetError, match="holds sequences .* space 'image' builds networks for images.*--space sequence"):
        fit_space_to_data(SearchConfig(dataset=seq, space="image"))
    with pytest.raises(DatasetError, match="holds images .*--space image or nb201"):
        fit_space_to_data(SearchConfig(space="sequence"))


def test_cli_refuses_an_image_space_on_sequences_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_sequences(tmp_path / "seq.npz", n=20)
    code = main(["search", "--dataset", "npz:seq.npz", "--space", "image"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USAGE and len(err.splitlines()) == 1 and "--space sequence" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq.npz"], "bad input writes nothing"


@pytest.mark.slow
def test_tiny_search_on_npz_sequences_trains_and_exports_a_1d_onnx_model(project):
    from mlflow.tracking import MlflowClient

    from nas_core.evaluation.worker import _DATA, evaluate, load_data
    from nas_pipeline.pipeline import build_search

    write_sequences(project.parent / "waves.npz")
    config = SearchConfig(
        dataset=f"npz:{project.parent / 'waves.npz'}", project_dir=project, output=project / "out",
        epochs=1, population=2, budget=2, workers=1,
    )  # fmt: skip
    run = build_search(config, search_id="seq")
    assert run.config.space == "sequence" and isinstance(run.space, SequenceSpace)
    assert run.config.experiment_name == "nas-npz-waves"
    run.prepare()
    assert run.data.input_shape == (2, 24) and run.data.ndim == 1
    while jobs := run.propose():
        for job in jobs:
            assert job.space == "sequence"
            run.record(evaluate(job))
        run.select()
    assert [r.status for r in run.records] == ["ok", "ok"], [r.reason for r in run.records]
    client = MlflowClient(run.tracker.tracking_uri)
    params = client.get_run(run.records[0].mlflow_run_id).data.params
    assert any(k.endswith(".op") for k in params) and params["train.epochs"] == "1"
    report = run.export()
    proto = onnx.load(str(report.path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [2, 24]
    assert report.max_abs_diff <= 1e-4 and report.samples == 70
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["nas.classes"]) == ["a", "b", "c", "d", "e"]
    assert not meta["nas.input_range"].startswith("float32 in [0, 1]")  # float features keep their own range
    assert (project / "data" / "npz-waves" / "meta.json").is_file()
    _DATA.clear()  # as in a worker process: the job's dataset name finds the prepared folder
    data = load_data(job.data, job.dataset, job.dataset_version)
    assert data.input_shape == (2, 24) and data.classes == ["a", "b", "c", "d", "e"]
