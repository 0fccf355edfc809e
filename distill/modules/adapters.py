"""Feature adapters: map student feature maps to the teacher's channel width.

Registered in ``ADAPTER_REGISTRY``; each is called as ``cls(in_channels, out_channels, **kw)``
and maps (N, C_in, H, W) -> (N, C_out, H, W) without changing the spatial size.
"""

from __future__ import annotations

from detectron2.layers import Conv2d, get_norm
from torch import nn

from distill.errors import ConfigKeyError
from distill.registry import ADAPTER_REGISTRY


@ADAPTER_REGISTRY.register()
class Conv1x1Adapter(nn.Conv2d):
    """A single 1x1 convolution (with bias): the usual FitNets-style channel adapter."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)
        nn.init.kaiming_uniform_(self.weight, a=1)
        nn.init.zeros_(self.bias)


@ADAPTER_REGISTRY.register()
class ConvStackAdapter(nn.Sequential):
    """``num_convs`` 3x3 convolutions with ReLU (and optional norm) between them.

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        num_convs: number of 3x3 convolutions (>= 1).
        hidden_channels: width of the intermediate convolutions (default: out_channels).
        norm: detectron2 norm name applied after each intermediate convolution ("" = none).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_convs: int = 2,
        hidden_channels: int | None = None,
        norm: str = "",
    ):
        if num_convs < 1:
            raise ValueError(f"ConvStackAdapter: num_convs must be >= 1, got {num_convs}")
        hidden = hidden_channels or out_channels
        widths = [in_channels] + [hidden] * (num_convs - 1) + [out_channels]
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == num_convs - 1
            conv_norm = None if last or not norm else get_norm(norm, c_out)
            conv = Conv2d(c_in, c_out, 3, padding=1, bias=conv_norm is None, norm=conv_norm)
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers.append(conv)
            if not last:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def build_adapter(name: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Build a registered adapter by name; an unknown name lists the registered ones."""
    if name not in ADAPTER_REGISTRY:
        raise ConfigKeyError(
            f"unknown adapter {name!r}; registered: {sorted(n for n, _ in ADAPTER_REGISTRY)}"
        )
    return ADAPTER_REGISTRY.get(name)(in_channels, out_channels, **kwargs)
