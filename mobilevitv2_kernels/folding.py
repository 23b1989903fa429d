"""Folding an inference-mode BatchNorm into the convolution before it.

In eval mode ``BN(conv(x)) = conv(x) * scale + shift`` per output channel, with
``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``, so the pair is one
convolution with weight ``W * scale`` and bias ``b * scale + shift``.
"""

from __future__ import annotations

import torch
from torch import nn


def fold_batchnorm(
    conv_weight: torch.Tensor, bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of the convolution equal to ``bn(conv(x))`` with ``bn`` using its running statistics.

    ``conv_weight`` is (C_out, C_in / groups, kH, kW); the result has the same shape and is float32 (float64
    for float64 parameters), whatever the parameters' dtype, so that float16 models fold without an extra
    rounding step. Computed from the current parameters on every call (nothing is cached, so nothing can
    go stale); differentiable, although the fused op that consumes it is not.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv_weight.shape[0] != bn.num_features:
        raise ValueError(f"conv has {conv_weight.shape[0]} output channels but the BatchNorm has {bn.num_features}")
    dtype = torch.promote_types(conv_weight.dtype, torch.float32)
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    if conv_bias is not None:
        shift = shift + conv_bias.to(dtype) * scale
    weight = conv_weight.to(dtype) * scale.reshape(-1, *([1] * (conv_weight.dim() - 1)))
    return weight, shift
