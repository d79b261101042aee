"""build_model: shapes across resolutions, gradients, input normalisation, invalid genomes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas_core.builder import DEFAULT_STEM_CHANNELS, build_model
from nas_core.genome import Genome, GenomeError, Node
from nas_core.ops import OPS

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make(nodes, edges) -> Genome:
    built = [Node(n[0], n[1], dict(n[2]) if len(n) > 2 else {}) for n in nodes]
    return Genome(tuple(built), tuple(tuple(e) for e in edges)).validate()


def conv(kernel, channels, stride):
    return {"kernel": kernel, "channels": channels, "stride": stride}


def pool(stride):
    return {"kernel": 3, "stride": stride}


# stride-2 ops at several depths, channel changes, and skips that cross one, two and three halvings
CROSS_RES = make(
    [
        ("in", "input"),
        ("a", "conv", conv(3, 8, 2)),
        ("b", "sepconv", conv(3, 24, 2)),
        ("c", "maxpool", pool(2)),
        ("d", "avgpool", pool(1)),
        ("e", "identity"),
        ("f", "conv", conv(1, 4, 2)),
        ("out", "output"),
    ],
    [
        ("in", "a"),
        ("a", "b"),
        ("in", "b"),  # 16 channels at full size meets 8 channels at half size
        ("b", "c"),
        ("c", "d"),
        ("in", "d"),  # full size to an eighth
        ("b", "d"),  # a quarter to an eighth
        ("d", "out"),
        ("a", "out"),
        ("in", "e"),
        ("e", "out"),
        ("in", "f"),
        ("f", "out"),
    ],
)

# a diamond where both branches reduce differently before merging, then a sepconv with stride 2 after the merge
DIAMOND = make(
    [
        ("in", "input"),
        ("p", "sepconv", conv(5, 12, 2)),
        ("q", "avgpool", pool(2)),
        ("r", "conv", conv(7, 6, 1)),
        ("m", "sepconv", conv(7, 32, 2)),
        ("out", "output"),
    ],
    [("in", "p"), ("in", "q"), ("q", "r"), ("p", "m"), ("r", "m"), ("in", "m"), ("m", "out"), ("in", "out")],
)

CHAIN = make([("in", "input"), ("a", "conv", conv(3, 8, 1)), ("out", "output")], [("in", "a"), ("a", "out")])
DIRECT = make([("in", "input"), ("out", "output")], [("in", "out")])

GENOMES = {"cross_res": CROSS_RES, "diamond": DIAMOND, "chain": CHAIN, "direct": DIRECT}
SHAPES = [(1, 8, 8), (3, 7, 9), (1, 28, 28), (2, 5, 3), (3, 32, 17), (1, 1, 1)]


def expected_shapes(genome: Genome, input_shape, stem: int) -> dict[str, tuple[int, int, int]]:
    """(channels, height, width) of every node, computed independently of the builder."""
    _, h, w = input_shape
    shapes = {}
    for node_id in genome.topological_order():
        node = genome.node_map[node_id]
        if node.op == "input":
            shapes[node_id] = (stem, h, w)
            continue
        preds = [shapes[p] for p in genome.predecessors(node_id)]
        c, h_in, w_in = max(p[0] for p in preds), min(p[1] for p in preds), min(p[2] for p in preds)
        if node.op == "output":
            shapes[node_id] = (c, h_in, w_in)
            continue
        stride = node.settings.get("stride", 1)
        shapes[node_id] = (node.settings.get("channels", c), math.ceil(h_in / stride), math.ceil(w_in / stride))
    return shapes


@pytest.mark.parametrize("input_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(GENOMES))
def test_output_and_node_shapes(name, input_shape):
    torch.manual_seed(0)
    genome = GENOMES[name]
    model = build_model(genome, input_shape, num_classes=7)
    expected = expected_shapes(genome, input_shape, DEFAULT_STEM_CHANNELS)
    assert model.shapes == expected

    seen = {}
    for node_id, key in model.op_keys.items():
        model.ops[key].register_forward_hook(lambda _m, _i, out, node_id=node_id: seen.__setitem__(node_id, tuple(out.shape)))
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 7)
    assert torch.isfinite(logits).all()
    hidden = [n.id for n in genome.nodes if n.op not in ("input", "output")]
    assert set(seen) == set(hidden)
    for node_id in hidden:
        assert seen[node_id] == (3, *expected[node_id]), node_id


def test_cross_resolution_skips_use_pooling_and_projections():
    model = build_model(CROSS_RES, (3, 7, 9), num_classes=10)
    modules = list(model.edge_modules.modules())
    pools = [m for m in modules if isinstance(m, nn.AvgPool2d)]
    projections = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert pools, "skips across resolutions must be pooled"
    assert projections and all(m.kernel_size == (1, 1) for m in projections)
    # one aligner per edge into a non-input node
    assert len(model.edge_modules) == len(CROSS_RES.edges)
    # in -> d crosses three halvings of 7x9: 7 -> 4 -> 2 -> 1 and 9 -> 5 -> 3 -> 2
    assert model.shapes["d"][1:] == (1, 2)


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 7, 9), (1, 28, 28)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["cross_res", "diamond"])
def test_backward_reaches_every_parameter(name, input_shape):
    torch.manual_seed(1)
    model = build_model(GENOMES[name], input_shape, num_classes=5)
    model.train()
    x = torch.randn(4, *input_shape)
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    params = list(model.named_parameters())
    assert len(params) > 4
    for param_name, param in params:
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_model_normalises_with_mean_and_std(train):
    torch.manual_seed(2)
    input_shape, mean, std = (3, 7, 9), [0.5, -0.25, 2.0], [0.2, 1.5, 3.0]
    normalising = build_model(DIAMOND, input_shape, 4, mean=mean, std=std)
    plain = build_model(DIAMOND, input_shape, 4)
    weights = {k: v for k, v in normalising.state_dict().items() if k not in ("normalize.mean", "normalize.std")}
    result = plain.load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["normalize.mean", "normalize.std"] and not result.unexpected_keys
    for model in (normalising, plain):
        model.train(train)

    x = torch.rand(2, *input_shape) * 4.0 - 1.0
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = normalising(x)
        reference = plain((x - m) / s)
        unnormalised = plain(x)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out, unnormalised, atol=1e-3), "mean/std had no effect"


def test_mean_and_std_are_saved_buffers():
    model = build_model(CHAIN, (3, 5, 5), 2, mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 4.0])
    state = model.state_dict()
    torch.testing.assert_close(state["normalize.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(state["normalize.std"].flatten(), torch.tensor([1.0, 2.0, 4.0]))
    assert "normalize.mean" not in dict(model.named_parameters())
    default = build_model(CHAIN, (3, 5, 5), 2).state_dict()
    assert torch.equal(default["normalize.mean"].flatten(), torch.zeros(3))
    assert torch.equal(default["normalize.std"].flatten(), torch.ones(3))


def test_stem_channels_and_classifier_width():
    model = build_model(DIAMOND, (1, 8, 8), 3, stem_channels=5)
    assert model.shapes["in"] == (5, 8, 8)
    assert model.shapes["out"][0] == 32
    assert model.classifier.in_features == 32 and model.classifier.out_features == 3
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_multi_input_node_sums_its_inputs():
    # out = identity(stem) + identity(stem): the classifier sees twice the single-branch features
    single = make([("in", "input"), ("a", "identity"), ("out", "output")], [("in", "a"), ("a", "out")])
    double = make(
        [("in", "input"), ("a", "identity"), ("b", "identity"), ("out", "output")],
        [("in", "a"), ("in", "b"), ("a", "out"), ("b", "out")],
    )
    torch.manual_seed(3)
    one = build_model(single, (1, 6, 6), 2).eval()
    two = build_model(double, (1, 6, 6), 2).eval()
    two.load_state_dict(one.state_dict())
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        features = one.stem(x).mean(dim=(2, 3))
        torch.testing.assert_close(two(x), F.linear(2 * features, one.classifier.weight, one.classifier.bias))
        torch.testing.assert_close(one(x), one.classifier(features))


@pytest.mark.parametrize(
    "genome",
    [
        Genome((Node("in", "input"), Node("a", "identity"), Node("out", "output")), (("in", "a"),)),
        Genome((Node("in", "input"), Node("a", "conv", conv(4, 8, 1)), Node("out", "output")), (("in", "a"), ("a", "out"))),
        Genome((Node("in", "input"), Node("a", "nope"), Node("out", "output")), (("in", "a"), ("a", "out"))),
        Genome(
            (Node("in", "input"), Node("a", "identity"), Node("b", "identity"), Node("out", "output")),
            (("in", "a"), ("a", "b"), ("b", "a"), ("b", "out")),
        ),
        Genome((Node("in", "input"), Node("out", "output")), ()),
    ],
    ids=["dead_end", "bad_kernel", "unknown_op", "cycle", "no_edges"],
)
def test_invalid_genome_raises_genome_error(genome):
    with pytest.raises(GenomeError):
        build_model(genome, (1, 8, 8), 10)


def test_every_registered_op_builds_inside_a_model():
    nodes, edges = [("in", "input"), ("out", "output")], []
    for name, spec in OPS.items():
        if spec.factory is None:
            continue
        settings = {k: 8 if allowed is None else allowed[-1] for k, allowed in spec.settings.items()}
        nodes.append((name, name, settings))
        edges += [("in", name), (name, "out")]
    model = build_model(make(nodes, edges), (2, 9, 9), 3)
    assert set(model.op_keys) == {n[0] for n in nodes[2:]}
    assert model(torch.randn(2, 2, 9, 9)).shape == (2, 3)
