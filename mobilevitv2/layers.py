"""Convolutional building blocks: conv-norm-act and the MobileNetV2 inverted residual.

Module and attribute names follow transformers' MobileViTV2 so that state-dict keys are identical.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilevitv2.config import MobileViTV2Config, make_divisible

_ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}") from None


class MobileViTV2ConvLayer(nn.Module):
    """Conv2d (no bias unless asked) -> optional BatchNorm2d (eps 1e-5) -> optional activation.

    ``use_activation``: True for the config's ``hidden_act``, False for none, or an activation name.
    """

    def __init__(
        self,
        config: MobileViTV2Config,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        dilation: int = 1,
        use_normalization: bool = True,
        use_activation: bool | str = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels ({in_channels} -> {out_channels}) must be divisible by groups ({groups})")
        self.convolution = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.normalization = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1) if use_normalization else None
        if isinstance(use_activation, str):
            self.activation = activation(use_activation)
        elif use_activation:
            self.activation = activation(config.hidden_act)
        else:
            self.activation = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convolution(x)
        if self.normalization is not None:
            x = self.normalization(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class MobileViTV2InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + act, depthwise 3x3 + act, 1x1 reduce; residual when shapes allow."""

    def __init__(
        self, config: MobileViTV2Config, in_channels: int, out_channels: int, stride: int, dilation: int = 1
    ) -> None:
        super().__init__()
        hidden = make_divisible(int(round(in_channels * config.expand_ratio)), 8)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand_1x1 = MobileViTV2ConvLayer(config, in_channels, hidden, kernel_size=1)
        self.conv_3x3 = MobileViTV2ConvLayer(
            config, hidden, hidden, kernel_size=3, stride=stride, groups=hidden, dilation=dilation
        )
        self.reduce_1x1 = MobileViTV2ConvLayer(config, hidden, out_channels, kernel_size=1, use_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.reduce_1x1(self.conv_3x3(self.expand_1x1(x)))
        return x + out if self.use_residual else out


class MobileViTV2MobileNetLayer(nn.Module):
    """``num_stages`` inverted residuals; only the first one changes width and stride."""

    def __init__(
        self, config: MobileViTV2Config, in_channels: int, out_channels: int, stride: int = 1, num_stages: int = 1
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList()
        for i in range(num_stages):
            self.layer.append(
                MobileViTV2InvertedResidual(config, in_channels, out_channels, stride=stride if i == 0 else 1)
            )
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return x
