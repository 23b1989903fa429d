"""The model in an inference form for a CPU: BatchNorm folded into the convolutions and, optionally, every
MobileViTV2 block computing its attention in the image layout, with no unfold and no fold.

Why no unfold is needed: in a block, everything but the attention's softmax and weighted sum is pointwise
per pixel (the 1x1 convolutions, ReLU, the products) or over all of a sample's (d, H, W) values (the
one-group GroupNorms), so it does not matter in what order the pixels are stored. The softmax and the sum
run over the N patches for each pixel offset inside a patch; in the image (B, d, H, W) those are the
pixels (i*ph + r, j*pw + s) for a fixed offset (r, s), reached by viewing H as (H/ph, ph) and W as
(W/pw, pw) and reducing over the two patch-grid axes. So the block runs on the image as it is, with no
copy and no transpose; the results equal the reference to float32 rounding (the sums run in another
order). Measured, it is not faster: Inductor runs it at the same speed and OpenVINO slower than the
unfold/fold form (docs/design.md, "The CPU inference path"), so it is off by default.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mobilevitv2.blocks import MobileViTV2Layer, MobileViTV2LinearSelfAttention
from mobilevitv2.layers import MobileViTV2ConvLayer
from mobilevitv2_kernels.folding import fold_batchnorm


def grouped_softmax_context(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, patch_h: int, patch_w: int
) -> torch.Tensor:
    """Separable attention on images: ``query`` (B, 1, H, W), ``key`` and ``value`` (B, d, H, W) with H and
    W multiples of the patch size; returns ReLU(value) * context, (B, d, H, W), where for each offset (r, s)
    inside a patch the context is the sum over patches of key weighted by the softmax of query."""
    B, d, H, W = key.shape
    nh, nw = H // patch_h, W // patch_w
    grid = (nh, patch_h, nw, patch_w)
    scores = query.reshape(B, 1, *grid)
    scores = scores - scores.amax(dim=(2, 4), keepdim=True)
    weights = scores.exp()
    weights = weights / weights.sum(dim=(2, 4), keepdim=True)
    context = (key.reshape(B, d, *grid) * weights).sum(dim=(2, 4), keepdim=True)  # (B, d, 1, ph, 1, pw)
    return (F.relu(value).reshape(B, d, *grid) * context).reshape(B, d, H, W)


class ImageLayoutAttention(nn.Module):
    """:class:`~mobilevitv2.blocks.MobileViTV2LinearSelfAttention` on (B, d, H, W) images, for inference
    only: it has no attention dropout, whatever the mode."""

    def __init__(self, attention: MobileViTV2LinearSelfAttention, patch_size: tuple[int, int]) -> None:
        super().__init__()
        self.embed_dim, self.patch_size = attention.embed_dim, patch_size
        self.qkv_proj, self.out_proj = attention.qkv_proj, attention.out_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = torch.split(self.qkv_proj(x), [1, self.embed_dim, self.embed_dim], dim=1)
        return self.out_proj(grouped_softmax_context(query, key, value, *self.patch_size))


class ImageLayoutBlock(nn.Module):
    """:class:`~mobilevitv2.blocks.MobileViTV2Layer` (inference) with its transformer run on the image; the
    pixels the unfold would drop (sizes not a multiple of the patch) are left out and come back as zeros,
    exactly as the reference's fold returns them."""

    def __init__(self, layer: MobileViTV2Layer) -> None:
        super().__init__()
        self.patch_size, self.resize_to_patch_multiple = layer.patch_size, layer.resize_to_patch_multiple
        self.downsampling_layer, self.conv_kxk, self.conv_1x1 = layer.downsampling_layer, layer.conv_kxk, layer.conv_1x1
        self.transformer, self.layernorm, self.conv_projection = layer.transformer, layer.layernorm, layer.conv_projection
        for transformer_layer in self.transformer.layer:
            transformer_layer.attention = ImageLayoutAttention(transformer_layer.attention, self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsampling_layer(x)
        (ph, pw), (H, W) = self.patch_size, x.shape[-2:]
        if self.resize_to_patch_multiple and (H % ph or W % pw):
            H, W = (H + ph - 1) // ph * ph, (W + pw - 1) // pw * pw
            x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=True)
        x = self.conv_1x1(self.conv_kxk(x))
        h, w = H // ph * ph, W // pw * pw
        if (h, w) != (H, W):
            x = x[:, :, :h, :w]
        for layer in self.transformer.layer:  # the modules themselves: a layer's fused op works on patches
            x = layer.attention(layer.layernorm_before(x)) + x
            x = layer.ffn(layer.layernorm_after(x)) + x
        x = self.layernorm(x)
        if (h, w) != (H, W):
            x = F.pad(x, (0, W - w, 0, H - h))
        return self.conv_projection(x)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold every conv layer's BatchNorm (running statistics) into its convolution, in place."""
    for layer in model.modules():
        if isinstance(layer, MobileViTV2ConvLayer) and isinstance(layer.normalization, nn.BatchNorm2d):
            conv = layer.convolution
            weight, bias = fold_batchnorm(conv.weight, layer.normalization, conv.bias)
            conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
            layer.normalization = None
    return model


def inference_form(model: nn.Module, image_layout: bool = False) -> nn.Module:
    """A float32 CPU copy of ``model`` (any MobileViTV2 class) in eval mode on the reference path, with
    BatchNorm folded and, if ``image_layout``, the blocks in the image layout (module docstring). Its weights
    are its own: later changes to ``model`` do not reach it. Its state-dict keys differ from the model's (no
    BatchNorms)."""
    form = copy.deepcopy(model).float().cpu().eval()
    if hasattr(form, "set_implementation"):
        form.set_implementation("reference", check=False)  # the fused kernels are GPU paths
    for parameter in form.parameters():
        parameter.requires_grad_(False)
    fold_batchnorms(form)
    if not image_layout:
        return form
    for module in list(form.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MobileViTV2Layer):
                setattr(module, name, ImageLayoutBlock(child))
    return form
