"""The MobileViTV2 block: local conv, unfold to patches, separable-attention transformer, fold, projection.

Each module that has a fused path stores its implementation choice as an attribute (``attention_backend``,
``conv_backend``, ``transformer_backend``; None is the reference path), set by the model's
``set_implementation`` (:mod:`mobilevitv2.implementation`); ``forward`` reads nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import mobilevitv2_kernels
from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.implementation import backend_for, inference_fusion_applies
from mobilevitv2.layers import MobileViTV2ConvLayer, MobileViTV2InvertedResidual
from mobilevitv2_kernels import reference
from mobilevitv2_kernels.weights import InvertedResidualWeights, TransformerLayerWeights


class MobileViTV2LinearSelfAttention(nn.Module):
    """Separable self-attention over (B, d, P, N) patches (spec section 3); the core runs through the
    ``mobilevitv2::separable_attention`` op when ``attention_backend`` names a backend."""

    attention_backend: str | None = None

    def __init__(self, config: MobileViTV2Config, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.qkv_proj = MobileViTV2ConvLayer(
            config, embed_dim, 1 + 2 * embed_dim, kernel_size=1, bias=True, use_normalization=False, use_activation=False
        )
        self.attn_dropout = nn.Dropout(p=config.attn_dropout)
        self.out_proj = MobileViTV2ConvLayer(
            config, embed_dim, embed_dim, kernel_size=1, bias=True, use_normalization=False, use_activation=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # (B, 1+2d, P, N)
        backend = backend_for(self.attention_backend, "attention", x)
        dropout_active = self.training and self.attn_dropout.p > 0
        if backend is None or dropout_active:  # the fused kernel has no dropout on the scores
            query, key, value = torch.split(qkv, [1, self.embed_dim, self.embed_dim], dim=1)
            scores = self.attn_dropout(torch.softmax(query, dim=-1))  # softmax over the N patches
            context = torch.sum(key * scores, dim=-1, keepdim=True)  # (B, d, P, 1)
            out = F.relu(value) * context.expand_as(value)
        else:
            out = mobilevitv2_kernels.separable_attention(qkv, backend=backend)
        return self.out_proj(out)


class MobileViTV2FFN(nn.Module):
    def __init__(self, config: MobileViTV2Config, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = MobileViTV2ConvLayer(
            config, embed_dim, hidden_dim, kernel_size=1, bias=True, use_normalization=False, use_activation=True
        )
        self.dropout1 = nn.Dropout(config.ffn_dropout)
        self.conv2 = MobileViTV2ConvLayer(
            config, hidden_dim, embed_dim, kernel_size=1, bias=True, use_normalization=False, use_activation=False
        )
        self.dropout2 = nn.Dropout(config.ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.conv2(self.dropout1(self.conv1(x))))


class MobileViTV2TransformerLayer(nn.Module):
    """Pre-norm: h = x + attn(GN(x)); out = h + ffn(GN(h)). GN is a one-group GroupNorm over (d, P, N).

    ``transformer_backend`` (the model's "transformer" part; None: the modules) names the backend of the
    fused inference op ``mobilevitv2::transformer_layer``. It is taken only where it computes the same
    function as the modules: eval mode (dropout off), no gradient needed, GroupNorms with affine parameters
    and a SiLU FFN. Otherwise the modules run.
    """

    transformer_backend: str | None = None

    def __init__(self, config: MobileViTV2Config, embed_dim: int, ffn_dim: int) -> None:
        super().__init__()
        self.layernorm_before = nn.GroupNorm(1, embed_dim, eps=config.layer_norm_eps)
        self.attention = MobileViTV2LinearSelfAttention(config, embed_dim)
        self.layernorm_after = nn.GroupNorm(1, embed_dim, eps=config.layer_norm_eps)
        self.ffn = MobileViTV2FFN(config, embed_dim, ffn_dim)

    def _fused_backend(self, x: torch.Tensor) -> str | None:
        backend = backend_for(self.transformer_backend, "transformer", x)
        if not inference_fusion_applies(self, backend, x):
            return None
        norms = (self.layernorm_before, self.layernorm_after)
        if any(norm.weight is None or norm.eps != self.layernorm_before.eps for norm in norms):
            return None
        return backend if isinstance(self.ffn.conv1.activation, nn.SiLU) else None

    def _forward_fused(self, x: torch.Tensor, backend: str) -> torch.Tensor:
        attention, ffn = self.attention, self.ffn
        weights = TransformerLayerWeights(
            norm1_weight=self.layernorm_before.weight,
            norm1_bias=self.layernorm_before.bias,
            w_qkv=attention.qkv_proj.convolution.weight.flatten(1),
            b_qkv=attention.qkv_proj.convolution.bias,
            w_out=attention.out_proj.convolution.weight.flatten(1),
            b_out=attention.out_proj.convolution.bias,
            norm2_weight=self.layernorm_after.weight,
            norm2_bias=self.layernorm_after.bias,
            w_ffn1=ffn.conv1.convolution.weight.flatten(1),
            b_ffn1=ffn.conv1.convolution.bias,
            w_ffn2=ffn.conv2.convolution.weight.flatten(1),
            b_ffn2=ffn.conv2.convolution.bias,
        )
        return mobilevitv2_kernels.transformer_layer(x, weights, eps=self.layernorm_before.eps, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = self._fused_backend(x)
        if backend is not None:
            return self._forward_fused(x, backend)  # (B, d, P, N)
        x = self.attention(self.layernorm_before(x)) + x
        return self.ffn(self.layernorm_after(x)) + x


class MobileViTV2Transformer(nn.Module):
    def __init__(self, config: MobileViTV2Config, embed_dim: int, n_layers: int) -> None:
        super().__init__()
        ffn_dim = int(config.ffn_multiplier * embed_dim // 16 * 16)
        self.layer = nn.ModuleList(MobileViTV2TransformerLayer(config, embed_dim, ffn_dim) for _ in range(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class MobileViTV2Layer(nn.Module):
    """One stage of stages 3-5: down-sampling inverted residual, then the MobileViTV2 block.

    ``attention_backend`` (the model's "attention" part) runs the unfold and fold through the registered
    ops. ``conv_backend`` (the "conv" part, like the inverted residuals') runs the block's local
    representation, depthwise kxk + BatchNorm + SiLU then the 1x1 to d, as one
    ``mobilevitv2::inverted_residual`` without expand conv (BatchNorm folded at every call), at inference
    only and only where that is the same function (3x3 depthwise, BatchNorm on running statistics, SiLU,
    a plain 1x1 after it). None: the reference path.
    """

    attention_backend: str | None = None
    conv_backend: str | None = None

    def __init__(
        self,
        config: MobileViTV2Config,
        in_channels: int,
        out_channels: int,
        attn_unit_dim: int,
        n_attn_blocks: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = (config.patch_size, config.patch_size)
        self.resize_to_patch_multiple = config.non_divisible_patching == "resize"
        # Under output stride 8/16 the stage stops down-sampling and dilates instead.
        self.downsampling_layer = MobileViTV2InvertedResidual(
            config,
            in_channels,
            out_channels,
            stride=2 if dilation == 1 else 1,
            dilation=dilation // 2 if dilation > 1 else 1,
        )
        local_dilation = dilation if config.dilate_local_conv else 1
        self.conv_kxk = MobileViTV2ConvLayer(
            config, out_channels, out_channels, config.conv_kernel_size, groups=out_channels, dilation=local_dilation
        )
        self.conv_1x1 = MobileViTV2ConvLayer(
            config, out_channels, attn_unit_dim, kernel_size=1, use_normalization=False, use_activation=False
        )
        self.transformer = MobileViTV2Transformer(config, attn_unit_dim, n_attn_blocks)
        self.layernorm = nn.GroupNorm(1, attn_unit_dim, eps=config.layer_norm_eps)
        self.conv_projection = MobileViTV2ConvLayer(
            config, attn_unit_dim, out_channels, kernel_size=1, use_normalization=True, use_activation=False
        )

    def _resize_up_to_patch_multiple(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (H, W) = self.patch_size, x.shape[-2:]
        size = ((H + ph - 1) // ph * ph, (W + pw - 1) // pw * pw)  # traces correctly (no negative floor)
        if size == (H, W):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def _local_fused_backend(self, x: torch.Tensor) -> str | None:
        backend = backend_for(self.conv_backend, "conv", x)
        if not inference_fusion_applies(self, backend, x):
            return None
        conv, norm, act = self.conv_kxk.convolution, self.conv_kxk.normalization, self.conv_kxk.activation
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != conv.in_channels or conv.bias is not None:
            return None
        if norm is None or norm.running_mean is None or not isinstance(act, nn.SiLU):
            return None
        return backend if self.conv_1x1.normalization is None and self.conv_1x1.activation is None else None

    def _local_representation(self, x: torch.Tensor) -> torch.Tensor:
        """depthwise kxk + BN + SiLU, then the 1x1 to d: (B, C, H, W) -> (B, d, H, W)."""
        backend = self._local_fused_backend(x)
        if backend is None:
            return self.conv_1x1(self.conv_kxk(x))
        w_dw, b_dw = mobilevitv2_kernels.fold_batchnorm(self.conv_kxk.convolution.weight, self.conv_kxk.normalization)
        pointwise = self.conv_1x1.convolution
        w_pw = pointwise.weight.flatten(1)
        b_pw = pointwise.bias if pointwise.bias is not None else w_pw.new_zeros(w_pw.shape[0])
        weights = InvertedResidualWeights(None, None, w_dw, b_dw, w_pw, b_pw)
        return mobilevitv2_kernels.inverted_residual(
            x, weights, stride=1, dilation=self.conv_kxk.convolution.dilation[0], backend=backend
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsampling_layer(x)  # (B, C, H, W)
        if self.resize_to_patch_multiple:
            x = self._resize_up_to_patch_multiple(x)
        x = self._local_representation(x)  # (B, d, H, W)
        size = (x.shape[-2], x.shape[-1])
        backend = backend_for(self.attention_backend, "attention", x)
        if backend is None:
            patches = reference.unfold_forward(x, *self.patch_size)  # (B, d, P, N)
        else:
            patches = mobilevitv2_kernels.unfold(x, self.patch_size, backend=backend)
        patches = self.layernorm(self.transformer(patches))
        if backend is None:
            x = reference.fold_forward(patches, *size, *self.patch_size)  # (B, d, H, W)
        else:
            x = mobilevitv2_kernels.fold(patches, size, self.patch_size, backend=backend)
        return self.conv_projection(x)  # (B, C, H, W)
