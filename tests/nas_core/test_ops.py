"""The op registry: every registered op builds, runs forward and backward (2D, and 1D where it has a sequence
version); create_op and check_op reject bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nas_core.ops import (
    CHANNEL_RANGE,
    INPUT_OP,
    MARKERS,
    OPS,
    OUTPUT_OP,
    OpSettingsError,
    check_op,
    create_op,
    list_ops,
    register_op,
)

IN_CHANNELS, SIZE = 4, 8
BUILDABLE = [name for name in list_ops() if name not in MARKERS]
SEQUENCE_OPS = [name for name in BUILDABLE if OPS[name].factory_1d is not None]


def first_settings(name: str) -> dict:
    """The first allowed value of each setting, 8 for a channel count."""
    return {key: 8 if allowed is None else allowed[0] for key, allowed in OPS[name].settings.items()}


def all_settings(name: str, channels: tuple[int, ...] = (1, 8)) -> list[dict]:
    """Every combination of allowed values, with the given channel counts."""
    spec = OPS[name].settings
    choices = [channels if allowed is None else allowed for allowed in spec.values()]
    return [dict(zip(spec, values, strict=True)) for values in itertools.product(*choices)]


def test_registry_has_the_builtin_ops():
    assert {"conv", "sepconv", "maxpool", "avgpool", "identity"} <= set(BUILDABLE)
    assert {"conv", "sepconv", "maxpool", "avgpool", "identity"} == set(SEQUENCE_OPS)
    assert list_ops()[:2] == [INPUT_OP, OUTPUT_OP]
    assert OPS[INPUT_OP].factory is None and OPS[OUTPUT_OP].factory is None
    assert all(OPS[name].factory is not None and OPS[name].name == name for name in BUILDABLE)


@pytest.mark.parametrize("name", MARKERS)
@pytest.mark.parametrize("dims", [1, 2])
def test_graph_markers_build_no_module(name, dims):
    with pytest.raises(OpSettingsError, match=f"op '{name}' is a graph marker"):
        create_op(name, IN_CHANNELS, dims=dims)


def test_an_op_name_cannot_be_registered_twice():
    before = OPS["conv"]
    with pytest.raises(ValueError, match="op 'conv' is already registered"):
        register_op("conv", kernel=(3,))(lambda in_ch, s: torch.nn.Identity())
    assert OPS["conv"] is before


def test_create_op_checks_settings_and_names():
    with pytest.raises(OpSettingsError, match="unknown op 'nope'.*conv"):
        create_op("nope", IN_CHANNELS)
    with pytest.raises(OpSettingsError, match="missing settings: channels"):
        create_op("conv", IN_CHANNELS, {"kernel": 3, "stride": 1})
    with pytest.raises(OpSettingsError, match="no 1D"):
        create_op("nor_conv_3x3", IN_CHANNELS, dims=1)
    assert isinstance(create_op("conv", IN_CHANNELS, first_settings("conv"), dims=1)[0], torch.nn.Conv1d)
    assert isinstance(OPS.create("conv", IN_CHANNELS, first_settings("conv"))[0], torch.nn.Conv2d)


def _forward_backward(name: str, module: torch.nn.Module, x: torch.Tensor, expected: tuple[int, ...]) -> None:
    y = module(x)
    assert tuple(y.shape) == expected
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if name == "none":  # NAS-Bench-201's zero edge: carries nothing, in either direction
        assert not y.any() and not x.grad.any()
    else:
        assert x.grad.abs().sum() > 0
    for param_name, param in module.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all()


@pytest.mark.parametrize("name", SEQUENCE_OPS)
def test_sequence_op_builds_runs_forward_and_backward_in_1d(name):
    torch.manual_seed(0)
    spec, settings = OPS[name], first_settings(name)
    module = create_op(name, IN_CHANNELS, settings, dims=1)
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d)) for m in module.modules())
    x = torch.randn(2, IN_CHANNELS, SIZE + 3, requires_grad=True)
    stride = spec.stride(settings)
    _forward_backward(name, module, x, (2, spec.out_channels(IN_CHANNELS, settings), math.ceil((SIZE + 3) / stride)))


@pytest.mark.parametrize("name", BUILDABLE)
def test_op_builds_runs_forward_and_backward(name):
    torch.manual_seed(0)
    spec = OPS[name]
    settings = first_settings(name)
    module = create_op(name, IN_CHANNELS, settings)
    assert isinstance(module, torch.nn.Module)
    x = torch.randn(2, IN_CHANNELS, SIZE, SIZE, requires_grad=True)
    stride = spec.stride(settings)
    expected = (2, spec.out_channels(IN_CHANNELS, settings), math.ceil(SIZE / stride), math.ceil(SIZE / stride))
    _forward_backward(name, module, x, expected)


@pytest.mark.parametrize("name", BUILDABLE)
@pytest.mark.parametrize("size", [1, 7, 8])
def test_op_output_shape_for_every_setting(name, size):
    spec = OPS[name]
    with torch.no_grad():
        for settings in all_settings(name):
            check_op(name, settings)
            module = spec.factory(IN_CHANNELS, settings)
            y = module(torch.randn(2, IN_CHANNELS, size, size + 2))
            stride = spec.stride(settings)
            expected = (2, spec.out_channels(IN_CHANNELS, settings), math.ceil(size / stride), math.ceil((size + 2) / stride))
            assert tuple(y.shape) == expected, settings


def test_pooling_and_identity_keep_channels():
    for name in ("maxpool", "avgpool", "identity"):
        assert OPS[name].out_channels(5, first_settings(name)) == 5
    assert OPS["conv"].out_channels(5, {**first_settings("conv"), "channels": 12}) == 12


@pytest.mark.parametrize("name", ["nope", "", "Conv", "conv3x3", "inputs"])
def test_check_op_rejects_unknown_op(name):
    with pytest.raises(OpSettingsError, match=f"unknown op '{name}'"):
        check_op(name, {})


@pytest.mark.parametrize(
    "name, settings, fragment",
    [
        ("conv", {"kernel": 3, "channels": 8}, "missing settings: stride"),
        ("conv", {}, "missing settings: channels, kernel, stride"),
        ("conv", {"kernel": 3, "channels": 8, "stride": 1, "groups": 2}, "unknown settings: groups"),
        ("conv", {"kernel": 4, "channels": 8, "stride": 1}, "kernel=4"),
        ("conv", {"kernel": "3", "channels": 8, "stride": 1}, "kernel='3'"),
        ("conv", {"kernel": True, "channels": 8, "stride": 1}, "kernel=True"),
        ("conv", {"kernel": 3, "channels": 8, "stride": 3}, "stride=3"),
        ("conv", {"kernel": 3, "channels": 0, "stride": 1}, "channels=0"),
        ("conv", {"kernel": 3, "channels": -8, "stride": 1}, "channels=-8"),
        ("conv", {"kernel": 3, "channels": CHANNEL_RANGE[1] + 1, "stride": 1}, f"channels={CHANNEL_RANGE[1] + 1}"),
        ("conv", {"kernel": 3, "channels": 8.0, "stride": 1}, "channels=8.0"),
        ("conv", {"kernel": 3, "channels": "8", "stride": 1}, "channels='8'"),
        ("conv", {"kernel": 3, "channels": True, "stride": 1}, "channels=True"),
        ("sepconv", {"kernel": 1, "channels": 8, "stride": 1}, "kernel=1"),
        ("maxpool", {"kernel": 5, "stride": 1}, "kernel=5"),
        ("avgpool", {"kernel": 3, "stride": 1, "channels": 8}, "unknown settings: channels"),
        ("identity", {"stride": 1}, "unknown settings: stride"),
        (INPUT_OP, {"channels": 3}, "unknown settings: channels"),
        (OUTPUT_OP, {"kernel": 1}, "unknown settings: kernel"),
    ],
)
def test_check_op_rejects_wrong_settings(name, settings, fragment):
    with pytest.raises(OpSettingsError, match=f"op '{name}'.*{fragment}"):
        check_op(name, settings)


def test_op_settings_error_is_a_value_error():
    assert issubclass(OpSettingsError, ValueError)


@pytest.mark.parametrize("name", [*BUILDABLE, INPUT_OP, OUTPUT_OP])
def test_check_op_accepts_every_allowed_setting(name):
    for settings in all_settings(name, channels=(CHANNEL_RANGE[0], 8, CHANNEL_RANGE[1])):
        check_op(name, settings)  # raises on failure


@pytest.mark.parametrize(
    "name, settings",
    [
        ("conv", {"kernel": 3.0, "channels": 8, "stride": 1}),
        ("conv", {"kernel": 3, "channels": 8, "stride": 2.0}),
        ("maxpool", {"kernel": 3.0, "stride": 1}),
    ],
)
def test_check_op_rejects_float_for_integer_choice(name, settings):
    with pytest.raises(OpSettingsError):
        check_op(name, settings)
