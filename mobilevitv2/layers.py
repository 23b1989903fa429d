"""Convolutional building blocks: conv-norm-act and the MobileNetV2 inverted residual.

Module and attribute names follow transformers' MobileViTV2 so that state-dict keys are identical. The
inverted residual can run, at inference, as one fused op (``mobilevitv2_kernels.inverted_residual``) with
its BatchNorms folded into the convs; see :class:`MobileViTV2InvertedResidual`.
"""

from __future__ import annotations

import torch
from torch import nn

import mobilevitv2_kernels
from mobilevitv2_kernels.weights import InvertedResidualWeights
from mobilevitv2.config import MobileViTV2Config, make_divisible
from mobilevitv2.implementation import backend_for, inference_fusion_applies

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
    """MobileNetV2 block: 1x1 expand + act, depthwise 3x3 + act, 1x1 reduce; residual when shapes allow.

    ``conv_backend`` (the model's "conv" part; None: the modules) names the backend of the fused inference
    op ``mobilevitv2::inverted_residual``. The fused path is taken only when
    it computes the same function as the modules: eval mode (BatchNorm on its running statistics, folded
    from the current parameters at every call, so later weight changes are never stale), no gradient
    needed, SiLU activations. Otherwise, and in training, the eager modules run, so training is unchanged.
    """

    conv_backend: str | None = None

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

    def _fused_backend(self, x: torch.Tensor) -> str | None:
        backend = backend_for(self.conv_backend, "conv", x)
        if not inference_fusion_applies(self, backend, x):
            return None
        layers = (self.expand_1x1, self.conv_3x3, self.reduce_1x1)
        if any(layer.normalization is None or layer.normalization.running_mean is None for layer in layers):
            return None
        silu = isinstance(self.expand_1x1.activation, nn.SiLU) and isinstance(self.conv_3x3.activation, nn.SiLU)
        return backend if silu else None

    def _forward_fused(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        fold = mobilevitv2_kernels.fold_batchnorm
        w_expand, b_expand = fold(self.expand_1x1.convolution.weight, self.expand_1x1.normalization)  # (E, C_in, 1, 1)
        w_dw, b_dw = fold(self.conv_3x3.convolution.weight, self.conv_3x3.normalization)  # (E, 1, 3, 3)
        w_reduce, b_reduce = fold(self.reduce_1x1.convolution.weight, self.reduce_1x1.normalization)  # (C_out, E, 1, 1)
        conv = self.conv_3x3.convolution
        weights = InvertedResidualWeights(w_expand.flatten(1), b_expand, w_dw, b_dw, w_reduce.flatten(1), b_reduce)
        return mobilevitv2_kernels.inverted_residual(
            x,
            weights,
            stride=conv.stride[0],
            dilation=conv.dilation[0],
            residual=self.use_residual,
            backend=backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self._fused_backend(x)
        if backend is not None:
            return self._forward_fused(x, backend)  # (B, C_out, ceil(H/s), ceil(W/s)), one kernel
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
