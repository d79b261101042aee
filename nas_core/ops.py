"""The op registry: each op name maps to its allowed settings and a module factory.

Ops build 2D modules for image feature maps (N, C, H, W); ops registered with ``sequence=True`` (``conv``,
``sepconv``, ``maxpool``, ``avgpool``, ``identity``) also build Conv1d/MaxPool1d/AvgPool1d/BatchNorm1d modules
for sequences (N, C, L) under the same name and settings, so one genome format serves both. ``input`` and
``output`` are registered too, as graph markers without a module.

Checking an op's name and settings does not import torch: the factories import it when they build a module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas_core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

INPUT_OP = "input"
OUTPUT_OP = "output"
MARKERS = (INPUT_OP, OUTPUT_OP)  # graph nodes that build no module
CHANNEL_RANGE = (1, 1024)


class OpSettingsError(ValueError):
    """An op name is unknown or its settings are not allowed."""


@dataclass(frozen=True)
class OpSpec:
    """An op: its settings (name -> allowed values, or None for a channel count) and how to build it.

    ``factory`` builds the 2D module; ``factory_1d``, when the op has one, the module for sequences.
    """

    name: str
    settings: dict[str, tuple[Any, ...] | None]
    factory: Callable[[int, dict[str, Any]], nn.Module] | None
    factory_1d: Callable[[int, dict[str, Any]], nn.Module] | None = None

    def build(self, in_channels: int, settings: dict[str, Any], dims: int = 2) -> nn.Module:
        """The module for inputs with ``dims`` spatial dimensions (2: images, 1: sequences)."""
        if self.factory is None and self.factory_1d is None:
            raise OpSettingsError(f"op '{self.name}' is a graph marker: it builds no module")
        factory = {2: self.factory, 1: self.factory_1d}.get(dims)
        if factory is None:
            kind = {2: "2D (image)", 1: "1D (sequence)"}.get(dims, f"{dims}D")
            raise OpSettingsError(f"op '{self.name}' has no {kind} version")
        return factory(in_channels, settings)

    def __call__(self, in_channels: int, settings: dict[str, Any], dims: int = 2) -> nn.Module:
        """Same as :meth:`build`: an op spec is the registry's factory."""
        return self.build(in_channels, settings, dims)

    def out_channels(self, in_channels: int, settings: dict[str, Any]) -> int:
        return int(settings.get("channels", in_channels))

    def stride(self, settings: dict[str, Any]) -> int:
        return int(settings.get("stride", 1))


OPS: Registry[OpSpec] = Registry("op")
for _marker in MARKERS:
    OPS.add(_marker, OpSpec(_marker, {}, None))


def register_op(name: str, *, sequence: bool = False, **settings: tuple[Any, ...] | None):
    """Register a module factory ``(in_channels, settings) -> nn.Module`` under ``name`` with its allowed ``settings``.

    With ``sequence`` the factory also takes ``dims``; called with ``dims=1`` it builds the op for sequences.
    """

    def decorate(factory: Callable[..., nn.Module]):
        factory_1d = functools.partial(factory, dims=1) if sequence else None
        OPS.add(name, OpSpec(name, settings, factory, factory_1d))
        return factory

    return decorate


def check_op(name: str, settings: dict[str, Any]) -> None:
    """Raise OpSettingsError unless ``name`` is a registered op and ``settings`` fit it exactly."""
    spec = OPS.get(name)
    if spec is None:
        raise OpSettingsError(f"unknown op '{name}' (known: {', '.join(sorted(OPS))})")
    missing = sorted(set(spec.settings) - set(settings))
    extra = sorted(set(settings) - set(spec.settings))
    if missing:
        raise OpSettingsError(f"op '{name}' is missing settings: {', '.join(missing)}")
    if extra:
        raise OpSettingsError(f"op '{name}' has unknown settings: {', '.join(extra)}")
    for key, allowed in spec.settings.items():
        value = settings[key]
        if allowed is None:
            lo, hi = CHANNEL_RANGE
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise OpSettingsError(f"op '{name}': {key}={value!r} must be an integer in [{lo}, {hi}]")
        elif not any(value == a and type(value) is type(a) for a in allowed):  # 3.0 or True is not 3 or 1
            raise OpSettingsError(f"op '{name}': {key}={value!r} must be one of {list(allowed)}")


def create_op(name: str, in_channels: int, settings: dict[str, Any] | None = None, dims: int = 2) -> nn.Module:
    """The module of op ``name`` for ``in_channels`` input channels; ``settings`` are checked first."""
    settings = {} if settings is None else settings
    check_op(name, settings)
    return OPS[name].build(in_channels, settings, dims)


def list_ops() -> list[str]:
    """Every registered op name (the ``input`` and ``output`` markers first), in registration order."""
    return OPS.names()


class _TorchLayers(Mapping[int, type]):
    """Number of spatial dimensions -> a ``torch.nn`` class, looked up by name when used (torch imported then)."""

    def __init__(self, names: dict[int, str]) -> None:
        self._names = names

    def __getitem__(self, dims: int) -> type[nn.Module]:
        from torch import nn

        return getattr(nn, self._names[dims])

    def __iter__(self) -> Iterator[int]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


# modules by number of spatial dimensions
CONV: Mapping[int, type[nn.Module]] = _TorchLayers({1: "Conv1d", 2: "Conv2d"})
BATCH_NORM: Mapping[int, type[nn.Module]] = _TorchLayers({1: "BatchNorm1d", 2: "BatchNorm2d"})
MAX_POOL: Mapping[int, type[nn.Module]] = _TorchLayers({1: "MaxPool1d", 2: "MaxPool2d"})
AVG_POOL: Mapping[int, type[nn.Module]] = _TorchLayers({1: "AvgPool1d", 2: "AvgPool2d"})


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1, dims: int = 2) -> list[nn.Module]:
    from torch import nn

    return [
        CONV[dims](in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        BATCH_NORM[dims](out_ch),
        nn.ReLU(inplace=False),
    ]


@register_op("conv", sequence=True, kernel=(1, 3, 5, 7), channels=None, stride=(1, 2))
def conv(in_ch: int, s: dict[str, Any], dims: int = 2) -> nn.Module:
    """Convolution, batch norm, ReLU."""
    from torch import nn

    return nn.Sequential(*_conv_bn_relu(in_ch, s["channels"], s["kernel"], s["stride"], dims=dims))


@register_op("sepconv", sequence=True, kernel=(3, 5, 7), channels=None, stride=(1, 2))
def sepconv(in_ch: int, s: dict[str, Any], dims: int = 2) -> nn.Module:
    """Depthwise-separable convolution: depthwise k x k (or k), then pointwise 1 x 1 (or 1)."""
    from torch import nn

    k = s["kernel"]
    depthwise = CONV[dims](in_ch, in_ch, k, stride=s["stride"], padding=k // 2, groups=in_ch, bias=False)
    return nn.Sequential(depthwise, *_conv_bn_relu(in_ch, s["channels"], 1, 1, dims=dims))


@register_op("maxpool", sequence=True, kernel=(3,), stride=(1, 2))
def maxpool(in_ch: int, s: dict[str, Any], dims: int = 2) -> nn.Module:
    """Max pooling; keeps the channel count."""
    return MAX_POOL[dims](s["kernel"], stride=s["stride"], padding=s["kernel"] // 2)


@register_op("avgpool", sequence=True, kernel=(3,), stride=(1, 2))
def avgpool(in_ch: int, s: dict[str, Any], dims: int = 2) -> nn.Module:
    """Average pooling (padding excluded from the mean); keeps the channel count."""
    return AVG_POOL[dims](s["kernel"], stride=s["stride"], padding=s["kernel"] // 2, count_include_pad=False)


@register_op("identity", sequence=True)
def identity(in_ch: int, s: dict[str, Any], dims: int = 2) -> nn.Module:
    """Skip connection: passes its (merged) input through."""
    from torch import nn

    return nn.Identity()


# NAS-Bench-201 edge ops (Dong & Yang, 2020): channel-preserving, stride 1, ReLU-Conv-BN order.
@functools.cache
def _zero_class() -> type[nn.Module]:
    from torch import nn

    class Zero(nn.Module):
        """The ``none`` op: its output is zero, so the edge carries nothing."""

        def forward(self, x):
            return x * 0.0

    Zero.__qualname__ = "Zero"  # pickled as nas_core.ops.Zero, found again through __getattr__
    return Zero


def __getattr__(name: str) -> Any:
    if name == "Zero":  # defined on first use: it subclasses a torch class
        return _zero_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _relu_conv_bn(channels: int, kernel: int) -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(channels),
    )


@register_op("nor_conv_1x1")
def nor_conv_1x1(in_ch: int, s: dict[str, Any]) -> nn.Module:
    """NAS-Bench-201's ReLU, 1x1 conv, BN."""
    return _relu_conv_bn(in_ch, 1)


@register_op("nor_conv_3x3")
def nor_conv_3x3(in_ch: int, s: dict[str, Any]) -> nn.Module:
    """NAS-Bench-201's ReLU, 3x3 conv, BN."""
    return _relu_conv_bn(in_ch, 3)


@register_op("avg_pool_3x3")
def avg_pool_3x3(in_ch: int, s: dict[str, Any]) -> nn.Module:
    """NAS-Bench-201's 3x3 average pooling, stride 1."""
    from torch import nn

    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


@register_op("skip_connect")
def skip_connect(in_ch: int, s: dict[str, Any]) -> nn.Module:
    """NAS-Bench-201's identity edge."""
    from torch import nn

    return nn.Identity()


@register_op("none")
def none(in_ch: int, s: dict[str, Any]) -> nn.Module:
    """NAS-Bench-201's zero edge."""
    return _zero_class()()
