"""The model in an inference form for a CPU: BatchNorm folded into the convolutions, the linear maps that
follow each other with nothing between them composed into one, and optionally every MobileViTV2 block
computing its attention in the image layout, with no unfold and no fold.

The compositions (``compose_linear=True``, the default) take multiply-adds away without changing the
function; each is a product of weight matrices, computed in float64 and rounded once:

* The attention's key projection after the weighted sum. The context is sum_n softmax(q)_n * (W_k x_n + b_k)
  = W_k (sum_n softmax(q)_n x_n) + b_k, since the softmax weights sum to one: the key is projected once
  per (image, pixel offset) instead of at every pixel. The query and value projections stay a 1x1
  convolution of d to 1 + d channels.
* A block's last 1x1 projection (BatchNorm folded, no activation) and the next stage's first 1x1
  convolution (the expansion of its down-sampling inverted residual, which has no residual connection):
  one 1x1 convolution from the block's d channels straight to the expansion's width.
* The last block's projection and the classifier: the global mean commutes with a 1x1 convolution, so
  the classifier's matrix times the projection's is one linear layer on the pooled d channels.

Together they remove 13.7% of the multiply-adds of a width-1.0 classifier's convolutions and linear layers
at 256x256 (248 M of 1.81 G: 82 M in the keys, net of the key projections of the 4 pixel offsets' sums;
157 M in the two block-to-block compositions; 8.6 M in the classifier's). The stage outputs between the
composed maps are not the model's any more: a composed form's logits are the model's, its hidden states
(``output_hidden_states``) and pooled features are not.

Why no unfold is needed in the image layout: in a block, everything but the attention's softmax and
weighted sum is pointwise per pixel (the 1x1 convolutions, ReLU, the products) or over all of a sample's
(d, H, W) values (the one-group GroupNorms), so it does not matter in what order the pixels are stored. The
softmax and the sum run over the N patches for each pixel offset inside a patch; in the image (B, d, H, W)
those are the pixels (i*ph + r, j*pw + s) for a fixed offset (r, s), reached by viewing H as (H/ph, ph) and
W as (W/pw, pw) and reducing over the two patch-grid axes. So the block runs on the image as it is, with no
copy and no transpose; the results equal the reference to float32 rounding (the sums run in another
order). Measured (docs/design.md, "The CPU inference path"): in bf16 Inductor runs it 4-6% faster at batch
1 (2-core Xeon with AMX), so ``CPUInference`` uses it in bf16; in fp32 it is no faster, and OpenVINO runs
an export of it slower than the unfold/fold form, so ``inference_form`` and the exports leave it off by
default.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mobilevitv2.blocks import MobileViTV2Layer, MobileViTV2LinearSelfAttention, MobileViTV2TransformerLayer
from mobilevitv2.layers import MobileViTV2ConvLayer, MobileViTV2InvertedResidual
from mobilevitv2.models import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from mobilevitv2_kernels.folding import fold_batchnorm


def softmax_weighted_sum(
    query: torch.Tensor, inputs: torch.Tensor, patch_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """For each pixel offset inside a patch, the sum over the N patches of ``inputs`` weighted by the softmax
    of ``query`` over the patches. On patches (``patch_size`` None): ``query`` (B, 1, P, N) and ``inputs``
    (B, c, P, N) give (B, c, P, 1). On images: ``query`` (B, 1, H, W) and ``inputs`` (B, c, H, W), H and W
    multiples of the patch size, give (B, c, ph, pw). For bf16 or fp16 inputs (under autocast) the softmax
    and the sum run in float32 and the result is float32: neither the weights nor the sum are rounded to
    half precision. A float32 query is used as it is (no cast in a traced or exported graph)."""
    if query.dtype in (torch.bfloat16, torch.float16):
        query = query.float()
    if patch_size is None:
        return torch.sum(inputs * torch.softmax(query, dim=-1), dim=-1, keepdim=True)
    B, c, H, W = inputs.shape
    (ph, pw) = patch_size
    grid = (H // ph, ph, W // pw, pw)
    scores = query.reshape(B, 1, *grid)
    scores = scores - scores.amax(dim=(2, 4), keepdim=True)
    weights = scores.exp()
    weights = weights / weights.sum(dim=(2, 4), keepdim=True)
    return (inputs.reshape(B, c, *grid) * weights).sum(dim=(2, 4))


def times_context(values: torch.Tensor, context: torch.Tensor, patch_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``values`` (B, d, P, N) times ``context`` (B, d, P, 1), or, given ``patch_size``, ``values``
    (B, d, H, W) times ``context`` (B, d, ph, pw) at each pixel's offset inside its patch."""
    if patch_size is None:
        return values * context
    B, d, H, W = values.shape
    ph, pw = patch_size
    grid = (H // ph, ph, W // pw, pw)
    return (values.reshape(B, d, *grid) * context.reshape(B, d, 1, ph, 1, pw)).reshape(B, d, H, W)


def _pointwise_conv(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A 1x1 convolution with these (out, in) weights and bias, in float32, frozen."""
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=1)
    conv.weight = nn.Parameter(weight.float().reshape(*weight.shape[:2], 1, 1).contiguous(), requires_grad=False)
    conv.bias = nn.Parameter(bias.float().contiguous(), requires_grad=False)
    return conv


class InferenceAttention(nn.Module):
    """:class:`~mobilevitv2.blocks.MobileViTV2LinearSelfAttention` for inference only (no attention dropout,
    whatever the mode), on patches (B, d, P, N) or, given ``patch_size``, on images (B, d, H, W). With
    ``key_after_sum`` its 1x1 convolution makes the query and the values only, and the key projection is
    applied to the softmax-weighted sum of the input (module docstring)."""

    def __init__(
        self, attention: MobileViTV2LinearSelfAttention, patch_size: tuple[int, int] | None = None, key_after_sum: bool = True
    ) -> None:
        super().__init__()
        d = self.embed_dim = attention.embed_dim
        self.patch_size, self.out_proj = patch_size, attention.out_proj
        qkv = attention.qkv_proj
        if not key_after_sum:
            self.qkv_proj, self.key_proj = qkv, None
            return
        if not _plain_pointwise(qkv):
            raise ValueError("the key projection moves after the sum only for a plain 1x1 convolution with a bias")
        weight, bias = qkv.convolution.weight.flatten(1), qkv.convolution.bias
        query_and_value = torch.cat([torch.arange(1), torch.arange(1 + d, 1 + 2 * d)])
        self.qkv_proj = _pointwise_conv(weight[query_and_value], bias[query_and_value])  # (d -> 1 + d)
        self.key_proj = _pointwise_conv(weight[1 : 1 + d], bias[1 : 1 + d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.embed_dim
        if self.key_proj is None:
            query, key, value = torch.split(self.qkv_proj(x), [1, d, d], dim=1)
            # back to the key's dtype, as the reference's context is (this uncomposed form is the reference's
            # computation with BatchNorm folded; the composed one below keeps float32)
            context = softmax_weighted_sum(query, key, self.patch_size).to(key.dtype)
        else:
            query, value = torch.split(self.qkv_proj(x), [1, d], dim=1)
            summed = softmax_weighted_sum(query, x, self.patch_size)
            # A d x d matmul on one vector per pixel offset: in float32 even under autocast, at no measurable
            # cost, so that neither the (float32) sum nor the context is rounded to bf16 (a bf16 path's
            # relative logit error 1.40e-2 to 1.19e-2 with the classifier in float32 too, width 1.0).
            with torch.autocast(x.device.type, enabled=False):
                context = self.key_proj(summed)  # summed is float32 (softmax_weighted_sum)
        return self.out_proj(times_context(F.relu(value), context, self.patch_size))


class ImageLayoutBlock(nn.Module):
    """:class:`~mobilevitv2.blocks.MobileViTV2Layer` (inference) with its transformer run on the image; the
    pixels the unfold would drop (sizes not a multiple of the patch) are left out and come back as zeros,
    exactly as the reference's fold returns them. ``key_after_sum``: as :class:`InferenceAttention`'s."""

    def __init__(self, layer: MobileViTV2Layer, key_after_sum: bool = True) -> None:
        super().__init__()
        self.patch_size, self.resize_to_patch_multiple = layer.patch_size, layer.resize_to_patch_multiple
        self.downsampling_layer, self.conv_kxk, self.conv_1x1 = layer.downsampling_layer, layer.conv_kxk, layer.conv_1x1
        self.transformer, self.layernorm, self.conv_projection = layer.transformer, layer.layernorm, layer.conv_projection
        for transformer_layer in self.transformer.layer:
            transformer_layer.attention = InferenceAttention(transformer_layer.attention, self.patch_size, key_after_sum)

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


def _plain_pointwise(layer: nn.Module) -> bool:
    """Whether ``layer`` is a conv layer that is only a 1x1 convolution with a bias (BatchNorm folded, no
    activation), stride 1, one group."""
    if not isinstance(layer, MobileViTV2ConvLayer) or layer.normalization is not None or layer.activation is not None:
        return False
    conv = layer.convolution
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.bias is not None


def _never_fused(x: torch.Tensor) -> None:
    return None


def _composed(first: nn.Conv2d, second: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``second`` (a 1x1 convolution or a linear layer) applied to ``first``'s output
    (a 1x1 convolution), computed in float64: W2 W1 and W2 b1 + b2."""
    w1, b1 = first.weight.double().flatten(1), first.bias.double()
    w2 = second.weight.double().flatten(1)
    b2 = second.bias.double() if second.bias is not None else w2.new_zeros(w2.shape[0])
    return w2 @ w1, w2 @ b1 + b2


def compose_linear_maps(form: nn.Module) -> nn.Module:
    """Compose, in place, the linear maps of an inference form (BatchNorm folded) that follow each other
    with nothing between them (module docstring): each attention on patches gets its key projection after
    its weighted sum (:class:`ImageLayoutBlock` sets its own with ``key_after_sum``); for the classification
    and segmentation models, whose logits need no stage output but the last one, each block's projection
    goes into the next stage's expansion; and for the classifier, the last projection into the classifier.
    Their hidden states are then not the model's. Returns ``form``."""
    for module in list(form.modules()):
        if (
            isinstance(module, MobileViTV2TransformerLayer)
            and isinstance(module.attention, MobileViTV2LinearSelfAttention)
            and _plain_pointwise(module.attention.qkv_proj)
        ):
            module.attention = InferenceAttention(module.attention)
            # The fused transformer-layer op reads the qkv weights as 1 + 2d rows, which this layer no longer
            # has: the modules run here, whatever implementation is set on the form later.
            module._fused_backend = _never_fused
    if not isinstance(form, (MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation)):
        return form
    stages = form.mobilevitv2.encoder.layer
    for stage, following in zip(stages[:-1], stages[1:]):
        block_ends_in_projection = isinstance(stage, (MobileViTV2Layer, ImageLayoutBlock)) and _plain_pointwise(stage.conv_projection)
        downsampling = getattr(following, "downsampling_layer", None)
        if not block_ends_in_projection or not isinstance(downsampling, MobileViTV2InvertedResidual) or downsampling.use_residual:
            continue
        expand = downsampling.expand_1x1
        if expand.normalization is not None or expand.convolution.kernel_size != (1, 1) or expand.convolution.groups != 1:
            continue
        weight, bias = _composed(stage.conv_projection.convolution, expand.convolution)
        expand.convolution = _pointwise_conv(weight, bias)
        stage.conv_projection = nn.Identity()
    last = stages[-1]
    if (
        isinstance(form, MobileViTV2ForImageClassification)
        and isinstance(form.classifier, nn.Linear)
        and isinstance(last, (MobileViTV2Layer, ImageLayoutBlock))
        and _plain_pointwise(last.conv_projection)
    ):
        weight, bias = _composed(last.conv_projection.convolution, form.classifier)
        classifier = nn.Linear(weight.shape[1], weight.shape[0])
        classifier.weight = nn.Parameter(weight.float(), requires_grad=False)
        classifier.bias = nn.Parameter(bias.float(), requires_grad=False)
        form.classifier, last.conv_projection = classifier, nn.Identity()
    return form


def inference_form(model: nn.Module, image_layout: bool = False, compose_linear: bool = True) -> nn.Module:
    """A float32 CPU copy of ``model`` (any MobileViTV2 class) in eval mode on the reference path, with
    BatchNorm folded, with ``compose_linear`` its consecutive linear maps composed (then only its logits
    are the model's, not its intermediate features), and, if ``image_layout``, the blocks in the image
    layout (module docstring). Its weights are its own: later changes to ``model`` do not reach it. Its
    state-dict keys differ from the model's."""
    form = copy.deepcopy(model).float().cpu().eval()
    if hasattr(form, "set_implementation"):
        form.set_implementation("reference", check=False)  # the fused kernels are GPU paths
    for parameter in form.parameters():
        parameter.requires_grad_(False)
    fold_batchnorms(form)
    if image_layout:
        for module in list(form.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, MobileViTV2Layer):
                    setattr(module, name, ImageLayoutBlock(child, key_after_sum=compose_linear))
    if compose_linear:
        compose_linear_maps(form)
    return form
