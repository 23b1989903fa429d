"""Pure-PyTorch reference implementations: the single oracle for every kernel, and the model's eager path.

Every backend implements these functions with the same contract (``backends.UNSUPPORTED_OPS`` lists the
gaps) and the registered ops dispatch to one of them. As the eager path they compute what Hugging Face
transformers computes, the same operations in the same order, which keeps the eager model bit-compatible
with it. The layouts (qkv's channel order, unfold's pixel order): docs/design.md, "Layouts".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mobilevitv2_kernels.weights import AttentionWeights, InvertedResidualWeights, TransformerLayerWeights


def separable_attention_forward(qkv: torch.Tensor) -> torch.Tensor:
    """ReLU(value) * sum_N(key * softmax_N(query)), shape (B, d, P, N). Same dtype as ``qkv``."""
    d = (qkv.shape[1] - 1) // 2
    query, key, value = torch.split(qkv, [1, d, d], dim=1)
    scores = torch.softmax(query, dim=-1)  # (B, 1, P, N)
    context = torch.sum(key * scores, dim=-1, keepdim=True)  # (B, d, P, 1)
    return F.relu(value) * context.expand_as(value)


def separable_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`separable_attention_forward` with respect to ``qkv``, computed in fp32 (fp64 for fp64).

    With s = softmax_N(q), c = sum_N k*s, out = relu(v)*c:
      dv = g * c * [v > 0];  dc = sum_N g*relu(v);  dk = dc * s;
      ds = sum_d dc*k;       dq = s * (ds - sum_N ds*s).
    """
    d = (qkv.shape[1] - 1) // 2
    compute = torch.promote_types(qkv.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    q, k, v = torch.split(qkv.to(compute), [1, d, d], dim=1)
    g = grad_out.to(compute)
    s = torch.softmax(q, dim=-1)  # (B, 1, P, N)
    context = torch.sum(k * s, dim=-1, keepdim=True)  # (B, d, P, 1)
    relu_v = F.relu(v)
    grad_v = g * context * (v > 0)
    grad_context = torch.sum(g * relu_v, dim=-1, keepdim=True)  # (B, d, P, 1)
    grad_k = grad_context * s
    grad_s = torch.sum(grad_context * k, dim=1, keepdim=True)  # (B, 1, P, N)
    grad_q = s * (grad_s - torch.sum(grad_s * s, dim=-1, keepdim=True))
    return torch.cat([grad_q, grad_k, grad_v], dim=1).to(qkv.dtype)


def unfold_forward(x: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ph*pw, (H//ph)*(W//pw)), exactly ``F.unfold`` + reshape (copy-free view math)."""
    B, C, H, W = x.shape
    nh, nw = H // patch_h, W // patch_w
    x = x[:, :, : nh * patch_h, : nw * patch_w]
    patches = x.reshape(B, C, nh, patch_h, nw, patch_w).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(B, C, patch_h * patch_w, nh * nw)


def fold_forward(patches: torch.Tensor, height: int, width: int, patch_h: int, patch_w: int) -> torch.Tensor:
    """(B, C, ph*pw, N) -> (B, C, height, width), exactly ``F.fold``: zeros where unfold dropped pixels."""
    B, C, P, N = patches.shape
    nh, nw = height // patch_h, width // patch_w
    grid = patches.reshape(B, C, patch_h, patch_w, nh, nw).permute(0, 1, 4, 2, 5, 3)
    grid = grid.reshape(B, C, nh * patch_h, nw * patch_w)
    if nh * patch_h == height and nw * patch_w == width:
        return grid.contiguous()
    return F.pad(grid, (0, width - nw * patch_w, 0, height - nh * patch_h))


def inverted_residual_forward(
    x: torch.Tensor, weights: InvertedResidualWeights, stride: int, dilation: int, residual: bool
) -> torch.Tensor:
    """MobileNetV2 inverted residual with BatchNorm folded into the weights, computed in ``x``'s dtype:

    h = SiLU(conv1x1(x, w_expand) + b_expand)                                  (B, E, H, W); h = x if None
    h = SiLU(depthwise3x3(h, w_dw, stride, padding=dilation, dilation) + b_dw)  (B, E, ceil(H/s), ceil(W/s))
    y = conv1x1(h, w_reduce) + b_reduce (+ x when ``residual``)                 (B, C_out, ...)

    Weights: w_expand (E, C_in), w_dw (E, 9) or (E, 1, 3, 3), w_reduce (C_out, E); they and the biases are
    cast to ``x``'s dtype (so a float16 ``x`` gives PyTorch's own float16 result, the baseline the kernels'
    error is measured against).
    """
    w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce = weights
    dtype = x.dtype
    E = w_dw.shape[0]
    if w_expand is None:
        h = x
    else:
        h = F.silu(F.conv2d(x, w_expand.to(dtype).reshape(E, x.shape[1], 1, 1), b_expand.to(dtype)))
    h = F.conv2d(
        h, w_dw.to(dtype).reshape(E, 1, 3, 3), b_dw.to(dtype), stride=stride, padding=dilation, dilation=dilation, groups=E
    )
    h = F.silu(h)
    y = F.conv2d(h, w_reduce.to(dtype).reshape(w_reduce.shape[0], E, 1, 1), b_reduce.to(dtype))
    return y + x if residual else y


def transformer_layer_forward(x: torch.Tensor, weights: TransformerLayerWeights, eps: float) -> torch.Tensor:
    """One MobileViTV2 transformer layer at inference (no dropout), computed in ``x``'s dtype as the model's
    modules compute it:

    h = x + conv1x1(separable_attention(conv1x1(GN(x), w_qkv, b_qkv)), w_out, b_out)
    y = h + conv1x1(SiLU(conv1x1(GN(h), w_ffn1, b_ffn1)), w_ffn2, b_ffn2)

    x: (B, d, P, N) patches; GN is a one-group GroupNorm over (d, P, N) with ``eps`` and per-channel affine
    (norm1 before the attention, norm2 before the FFN). 1x1 weights are 2-D: w_qkv (1 + 2d, d), w_out
    (d, d), w_ffn1 (F, d), w_ffn2 (d, F); weights and biases are cast to ``x``'s dtype.
    """
    (norm1_weight, norm1_bias, w_qkv, b_qkv, w_out, b_out, norm2_weight, norm2_bias,
     w_ffn1, b_ffn1, w_ffn2, b_ffn2) = weights  # fmt: skip
    dtype = x.dtype

    def conv1x1(t, w, b):
        return F.conv2d(t, w.to(dtype)[:, :, None, None], b.to(dtype))

    xn = F.group_norm(x, 1, norm1_weight.to(dtype), norm1_bias.to(dtype), eps)
    h = conv1x1(separable_attention_forward(conv1x1(xn, w_qkv, b_qkv)), w_out, b_out) + x
    hn = F.group_norm(h, 1, norm2_weight.to(dtype), norm2_bias.to(dtype), eps)
    return conv1x1(F.silu(conv1x1(hn, w_ffn1, b_ffn1)), w_ffn2, b_ffn2) + h


def linear_self_attention_forward(x: torch.Tensor, weights: AttentionWeights) -> torch.Tensor:
    """The attention module with its projections, in ``x``'s dtype as the module computes it (inference,
    no dropout): conv1x1(separable_attention(conv1x1(x, w_qkv, b_qkv)), w_out, b_out) on (B, d, P, N), with
    w_qkv (1 + 2d, d) and w_out (d, d)."""
    w_qkv, b_qkv, w_out, b_out = weights
    dtype = x.dtype
    qkv = F.conv2d(x, w_qkv.to(dtype)[:, :, None, None], b_qkv.to(dtype))
    return F.conv2d(separable_attention_forward(qkv), w_out.to(dtype)[:, :, None, None], b_out.to(dtype))
