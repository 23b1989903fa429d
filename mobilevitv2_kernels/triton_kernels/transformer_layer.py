"""Launchers of the fused transformer-layer Triton kernels (:mod:`.transformer_layer_kernels`, re-exported
here): five launches per layer (GroupNorm moments; scores and context; value projection to residual;
moments; FFN and residual), two for the attention module alone, neither qkv nor the FFN activation reaching
memory. Each launch's arguments are built by a function of its own, so that the sm_90 compile test
specialises the kernels exactly as a launch does. Design notes: docs/design.md, "Transformer layer (Triton)"."""

from __future__ import annotations

import torch
import triton

from mobilevitv2_kernels.common import triton_interpreter_enabled
from mobilevitv2_kernels.triton_kernels.launch import on_tensor_device
from mobilevitv2_kernels.triton_kernels.transformer_layer_kernels import (
    _norm_mlp_kernel,
    _sample_moments_kernel,
    _score_context_kernel,
)
from mobilevitv2_kernels.weights import AttentionWeights, TransformerLayerWeights

MOMENTS_BLOCK = 1024
MAX_MOMENT_CHUNKS = 256  # per sample; the consumers combine them in registers


def _dot_options(dtype: torch.dtype) -> dict:
    dot_fp32 = dtype == torch.bfloat16 and triton_interpreter_enabled()
    return dict(DOT_PRECISION="ieee" if dtype == torch.float32 or dot_fp32 else "tf32", DOT_FP32=dot_fp32)


def _max_offset(t: torch.Tensor) -> int:
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


@on_tensor_device
def sample_moments(x: torch.Tensor, num_chunks: int | None = None) -> torch.Tensor:
    """(B, chunks, 3) float32: count, mean and centred sum of squares of consecutive chunks of each sample's
    D * P * N values, which :func:`score_context` and :func:`norm_mlp` combine into one-group GroupNorm's
    statistics (biased variance). ``num_chunks`` per sample (default: enough programs to fill the device;
    at most MAX_MOMENT_CHUNKS)."""
    B = x.shape[0]
    per_sample = x[0].numel()
    if num_chunks is None:
        target = 4 * (torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2)
        num_chunks = max(1, min(triton.cdiv(target, B), triton.cdiv(per_sample, 4 * MOMENTS_BLOCK)))
    num_chunks = min(num_chunks, MAX_MOMENT_CHUNKS)
    chunk = triton.cdiv(triton.cdiv(per_sample, num_chunks), MOMENTS_BLOCK) * MOMENTS_BLOCK
    num_chunks = triton.cdiv(per_sample, chunk)
    moments = torch.empty(B, num_chunks, 3, dtype=torch.float32, device=x.device)
    args, options = moments_kernel_arguments(x, moments, num_chunks, chunk)
    _sample_moments_kernel[(B, num_chunks)](*args, **options)
    return moments


def _moments_arguments(x: torch.Tensor, moments: torch.Tensor | None, eps: float) -> tuple[tuple, int]:
    """(NUM_CHUNKS, PER_SAMPLE, eps) of a consumer kernel, and its BLOCK_C (placeholders without moments)."""
    if moments is None:
        return (1, 1.0, 1.0), 2
    num_chunks = moments.shape[1]
    if tuple(moments.shape) != (x.shape[0], num_chunks, 3) or moments.dtype != torch.float32:
        raise ValueError(f"moments must be float32 (B={x.shape[0]}, chunks, 3), got {moments.dtype} {tuple(moments.shape)}")
    return (num_chunks, float(x[0].numel()), float(eps)), max(2, triton.next_power_of_2(num_chunks))


def moments_kernel_arguments(x, partial, num_chunks: int, chunk: int):
    """(positional arguments, constexprs and launch options) of one ``_sample_moments_kernel`` launch."""
    args = (x, partial, *x.stride(), x.shape[2], x.shape[3], x[0].numel(), num_chunks, chunk)
    return args, dict(BLOCK=MOMENTS_BLOCK, num_warps=4)


def score_context_kernel_arguments(x, moments, eps, gamma, beta, w_qkv, b_qkv, ctx, block_n: int | None = None):
    """(positional arguments, constexprs and launch options) of one ``_score_context_kernel`` launch;
    ``moments``, ``gamma`` and ``beta`` None: no normalisation."""
    B, D, P, N = x.shape
    block_d = max(16, triton.next_power_of_2(D))
    block_n = block_n or max(16, min(128, 8192 // block_d, triton.next_power_of_2(N)))
    if block_n < 1 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    if w_qkv.stride(1) != 1:
        raise ValueError("w_qkv must have unit column stride")
    moment_args, block_c = _moments_arguments(x, moments, eps)
    normalize = moments is not None
    args = (x, moments if normalize else b_qkv, gamma if normalize else b_qkv, beta if normalize else b_qkv,
            w_qkv, b_qkv, ctx, *x.stride(), w_qkv.stride(0), D, P, N, *moment_args)  # fmt: skip
    return args, dict(BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_O=max(1, 8192 // block_d), BLOCK_C=block_c,
                      NORMALIZE=normalize, num_warps=4 if block_d * block_n <= 4096 else 8)  # fmt: skip


def mlp_launch_config(dtype: torch.dtype, d: int, f: int) -> dict[str, int]:
    """Tiles and warps of :func:`norm_mlp`: the (BLOCK_D, BLOCK_L) float32 accumulator is capped at 8192
    values (4096 for float32), BLOCK_L between 16 and 128, 8 warps from 4096 accumulator values up (the sm_90
    compile test checks these configurations for spills)."""
    block_d = max(16, triton.next_power_of_2(d))
    cap = 4096 if dtype == torch.float32 else 8192
    block_l = max(16, min(128, cap // block_d))
    return dict(
        block_l=block_l,
        block_k=max(16, min(64 if dtype != torch.float32 else 32, triton.next_power_of_2(d))),
        block_f=max(16, min(64 if dtype != torch.float32 else 32, triton.next_power_of_2(f))),
        block_d=block_d,
        num_warps=8 if block_d * block_l >= 4096 else 4,
        num_stages=2,
    )


def mlp_kernel_arguments(
    x, moments, eps, gamma, beta, w1, b1, context, w2, b2, out, activation: str, cfg: dict, residual: bool = True
):
    """(positional arguments, constexprs and launch options, grid) of one ``_norm_mlp_kernel`` launch
    (separate so that the sm_90 compile test specialises the kernel exactly as the launcher does).
    ``moments``, ``gamma`` and ``beta`` None: no normalisation."""
    B, D, P, N = x.shape
    num_l_tiles = triton.cdiv(P * N, cfg["block_l"])
    moment_args, block_c = _moments_arguments(x, moments, eps)
    normalize = moments is not None
    args = (x, moments if normalize else b1, gamma if normalize else b1, beta if normalize else b1, w1, b1,
            context if context is not None else b1, w2, b2, out,
            *x.stride(), D, w1.shape[0], P, N, num_l_tiles, *moment_args)  # fmt: skip
    meta = dict(
        BLOCK_C=block_c, NORMALIZE=normalize, RESIDUAL=residual, ACTIVATION=activation, HAS_CONTEXT=context is not None, BLOCK_L=cfg["block_l"], BLOCK_K=cfg["block_k"],
        BLOCK_F=cfg["block_f"], BLOCK_D=cfg["block_d"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        **_dot_options(x.dtype),
    )  # fmt: skip
    return args, meta, (B * num_l_tiles,)


@on_tensor_device
def norm_mlp(
    x, moments, eps, gamma, beta, w1, b1, context, w2, b2, activation: str, out=None, residual: bool = True, **overrides
) -> torch.Tensor:
    """[x +] w2 @ (act(w1 @ xn + b1) [* context]) + b2 per pixel, xn = (x - mean) * rstd * gamma + beta
    with per-sample statistics from ``moments`` (:func:`sample_moments` of x) and ``eps``, or xn = x when
    ``moments``, ``gamma`` and ``beta`` are None: (B, D, P, N) contiguous in x's dtype. gamma, beta and
    biases float32, weights in the dot dtype, contiguous. ``out``: a preallocated contiguous result (tests
    fill it with NaN). ``overrides`` replace :func:`mlp_launch_config`'s entries."""
    cfg = {**mlp_launch_config(x.dtype, x.shape[1], w1.shape[0]), **overrides}
    for name, value in overrides.items():
        if name.startswith("block_") and (value < 16 or value & (value - 1)):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum is 16), got {value}")
    if cfg["block_d"] < x.shape[1]:
        raise ValueError(f"block_d={cfg['block_d']} must cover all {x.shape[1]} channels")
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {tuple(x.shape)}")
    args, meta, grid = mlp_kernel_arguments(x, moments, eps, gamma, beta, w1, b1, context, w2, b2, out, activation, cfg,
                                            residual)  # fmt: skip
    _norm_mlp_kernel[grid](*args, **meta)
    return out


@on_tensor_device
def score_context(x: torch.Tensor, moments, eps, gamma, beta, w_qkv, b_qkv, out=None, block_n: int | None = None):
    """(B, P, D) float32: the context vector W_k xbar + b_k of each (b, p), xbar = sum_n s_n xn_n with
    s = softmax_n(w_q . xn_n + b_q) and xn GroupNorm's output (per-sample statistics from ``moments``,
    affine ``gamma``, ``beta``), or x itself when those three are None. ``out``: a preallocated contiguous
    result; ``block_n``: columns per step (a power of two)."""
    B, D, P, N = x.shape
    ctx = torch.empty(B, P, D, dtype=torch.float32, device=x.device) if out is None else out
    args, options = score_context_kernel_arguments(x, moments, eps, gamma, beta, w_qkv, b_qkv, ctx, block_n)
    _score_context_kernel[(B * P,)](*args, **options)
    return ctx


def _dot_weight(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 1x1 weight as the dots take it: x's dtype, unit column stride (no copy when it already is)."""
    w = w.to(dtype)
    return w if w.stride(1) == 1 and w.stride(0) == w.shape[1] else w.contiguous()


@on_tensor_device
def transformer_layer_forward(x: torch.Tensor, weights: TransformerLayerWeights, eps: float) -> torch.Tensor:
    """The fused layer (arguments as :func:`mobilevitv2_kernels.reference.transformer_layer_forward`,
    validated by the op): (B, d, P, N) contiguous, x's dtype."""
    (norm1_weight, norm1_bias, w_qkv, b_qkv, w_out, b_out, norm2_weight, norm2_bias,
     w_ffn1, b_ffn1, w_ffn2, b_ffn2) = weights  # fmt: skip
    B, d, P, N = x.shape
    if max(_max_offset(x), d * P * N) >= 2**31:
        raise ValueError("transformer_layer (triton): one sample spans 2**31 elements or more")
    w_qkv = w_qkv if w_qkv.stride(1) == 1 else w_qkv.contiguous()
    moments = sample_moments(x)
    context = score_context(x, moments, eps, norm1_weight, norm1_bias, w_qkv, b_qkv)  # (B, P, d)
    h = norm_mlp(x, moments, eps, norm1_weight, norm1_bias, _dot_weight(w_qkv[1 + d :], x.dtype), b_qkv[1 + d :],
                 context, _dot_weight(w_out, x.dtype), b_out, "relu")  # fmt: skip
    return norm_mlp(h, sample_moments(h), eps, norm2_weight, norm2_bias, _dot_weight(w_ffn1, x.dtype), b_ffn1,
                    None, _dot_weight(w_ffn2, x.dtype), b_ffn2, "silu")  # fmt: skip


@on_tensor_device
def linear_self_attention_forward(x: torch.Tensor, weights: AttentionWeights) -> torch.Tensor:
    """The attention module alone, projections included, with the same kernels and identity (arguments as
    :func:`mobilevitv2_kernels.reference.linear_self_attention_forward`, validated by the op): the scores
    and the score-weighted mean of x in one pass, the key projection of that mean as the context, then
    out_proj(ReLU(value_proj(x)) * context) per pixel tile: two launches, and neither qkv nor the keys
    reach memory. (B, d, P, N) contiguous, x's dtype."""
    w_qkv, b_qkv, w_out, b_out = weights
    B, d, P, N = x.shape
    if max(_max_offset(x), d * P * N) >= 2**31:
        raise ValueError("linear_self_attention (triton): one sample spans 2**31 elements or more")
    w_qkv = w_qkv if w_qkv.stride(1) == 1 else w_qkv.contiguous()
    context = score_context(x, None, 0.0, None, None, w_qkv, b_qkv)  # (B, P, d)
    return norm_mlp(x, None, 0.0, None, None, _dot_weight(w_qkv[1 + d :], x.dtype), b_qkv[1 + d :], context,
                    _dot_weight(w_out, x.dtype), b_out, "relu", residual=False)  # fmt: skip
