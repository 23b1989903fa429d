"""Triton kernels for the fused MobileViTV2 transformer layer (inference), and their launcher.

One layer on x (B, d, P, N), with L = P * N pixels per sample and GN a one-group GroupNorm:

    h = x + W_o (ReLU(W_v GN1(x) + b_v) * context) + b_o,   context[b, :, p] = sum_n s[b,p,n] (W_k GN1(x)[b,:,p,n] + b_k)
    y = h + W_2 SiLU(W_1 GN2(h) + b_1) + b_2                s[b, p, :] = softmax_n(w_q . GN1(x)[b,:,p,:] + b_q)

Two identities remove most of the work of the unfused layer:

* GroupNorm is (x - mean) * rstd per sample, then a per-channel affine (gamma, beta) that the following 1x1
  conv absorbs: W (gamma * xhat + beta) + b = (W diag(gamma)) xhat + (W beta + b). The kernels normalise
  with per-sample statistics only; the launcher folds the affine into the weights (small d x d ops).
* The scores sum to one over n, so the context is the key projection of the score-weighted mean of the
  normalised input: context = W_k' xbar + b_k' with xbar[b, :, p] = sum_n s[b,p,n] xhat[b,:,p,n]. The d x d
  key projection over all L pixels becomes one over B * P vectors.

Kernels (five launches per layer, plus the folding and the (B*P, d) x (d, d) context product in PyTorch;
under ``torch.compile`` with Inductor's freezing the folding is done once, at compile time):

1. ``_sample_moments_kernel``: per (sample, chunk) the count, mean and centred sum of squares (two passes
   over the chunk, the second from L1/L2), float32. Its consumers combine a sample's chunks themselves
   (Chan et al.'s pairwise formula, no E[x^2] - E[x]^2) in their prologue, so no PyTorch op runs between.
2. ``_score_mean_kernel``: one program per (b, p): streams the N columns once, computing the scores and
   an online (max-subtracted) softmax-weighted sum of the normalised columns: xbar (B, P, d) float32.
3. ``_norm_mlp_kernel`` (attention half): per (sample, tile of BLOCK_L pixels): for each BLOCK_F chunk of
   the hidden channels, hid = ReLU(W_v' xhat + b_v') * context, acc += W_o hid (two ``tl.dot``s with the
   hidden chunk kept on chip); out = acc + b_o + x.
4. ``_sample_moments_kernel`` on h.
5. ``_norm_mlp_kernel`` (FFN half): hid = SiLU(W_1' hhat + b_1'), acc += W_2 hid; out = acc + b_2 + h.

From DRAM each half reads its input three times (statistics, [scores,] the fused MLP, whose re-reads of
the tile per hidden chunk hit L1/L2) and writes its output once; the (2d + 1)-channel qkv tensor and the
F-channel FFN activation never reach memory. Dots take x's dtype (float16/bfloat16 tensor cores) with
float32 accumulation; float32 inputs use IEEE dots (no TF32), so float32 results match the reference to
~1e-5. bfloat16 under the interpreter widens dot operands to float32 (the interpreter multiplies bfloat16
as raw bits; see inverted_residual.py). Whether this beats cuBLAS/cuDNN + torch.compile on a GPU is
unmeasured (``bench/gpu_check_kernels.py`` times it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilevitv2_kernels.backends import triton_interpreter_enabled


@triton.jit
def _sample_moments_kernel(
    x_ptr,  # (B, D, P, N), any strides
    partial_ptr,  # (B, NUM_CHUNKS, 3) float32: count, mean, centred sum of squares of each chunk
    stride_b, stride_c, stride_p, stride_n,
    P, N,
    PER_SAMPLE,  # D * P * N
    NUM_CHUNKS,
    CHUNK,  # elements per chunk (a multiple of BLOCK); the last chunk may be shorter
    BLOCK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    start = chunk * CHUNK
    stop = tl.minimum(start + CHUNK, PER_SAMPLE)
    x_b = x_ptr + b.to(tl.int64) * stride_b
    offs0 = tl.arange(0, BLOCK)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for e0 in range(start, stop, BLOCK):
        e = e0 + offs0
        c = e // (P * N)
        pn = e % (P * N)
        v = tl.load(x_b + c * stride_c + (pn // N) * stride_p + (pn % N) * stride_n, mask=e < stop, other=0.0)
        total += v.to(tl.float32)
    count = (stop - start).to(tl.float32)
    mean = tl.sum(total, axis=0) / count
    centred = tl.zeros((BLOCK,), dtype=tl.float32)
    for e0 in range(start, stop, BLOCK):  # second pass: the chunk is in L1/L2
        e = e0 + offs0
        c = e // (P * N)
        pn = e % (P * N)
        v = tl.load(x_b + c * stride_c + (pn // N) * stride_p + (pn % N) * stride_n, mask=e < stop, other=0.0)
        dev = tl.where(e < stop, v.to(tl.float32) - mean, 0.0)
        centred += dev * dev
    out = partial_ptr + (b * NUM_CHUNKS + chunk) * 3
    tl.store(out, count)
    tl.store(out + 1, mean)
    tl.store(out + 2, tl.sum(centred, axis=0))


@triton.jit
def _sample_mean_rstd(moments_ptr, b, NUM_CHUNKS, PER_SAMPLE, eps, BLOCK_C: tl.constexpr):
    """Sample b's mean and 1/sqrt(var + eps) from its chunks' (count, mean, centred sum of squares)."""
    offs = tl.arange(0, BLOCK_C)
    mask = offs < NUM_CHUNKS
    row = moments_ptr + (b * NUM_CHUNKS + offs) * 3
    count = tl.load(row, mask=mask, other=0.0)
    chunk_mean = tl.load(row + 1, mask=mask, other=0.0)
    centred = tl.load(row + 2, mask=mask, other=0.0)
    mean = tl.sum(count * chunk_mean, axis=0) / PER_SAMPLE
    dev = tl.where(mask, chunk_mean - mean, 0.0)
    variance = (tl.sum(centred, axis=0) + tl.sum(count * dev * dev, axis=0)) / PER_SAMPLE
    return mean, tl.rsqrt(variance + eps)


@triton.jit
def _score_mean_kernel(
    x_ptr,  # (B, D, P, N), any strides
    moments_ptr,  # (B, NUM_CHUNKS, 3) float32 from _sample_moments_kernel
    wq_ptr,  # (D,) float32 query weights with GroupNorm's gamma folded in
    bq_ptr,  # (1,) float32 query bias with GroupNorm's beta folded in
    xbar_ptr,  # (B, P, D) float32 output: softmax-weighted mean of the normalised columns
    stride_b, stride_c, stride_p, stride_n,
    D, P, N,
    NUM_CHUNKS, PER_SAMPLE, eps,  # the moments' chunks per sample, D * P * N (float), GroupNorm's epsilon
    BLOCK_D: tl.constexpr,  # >= D, a power of two
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,  # >= NUM_CHUNKS, a power of two
    NORMALIZE: tl.constexpr,  # False: xhat = x (no GroupNorm; moments_ptr unused)
):  # fmt: skip
    pid = tl.program_id(0)  # b * P + p
    b = pid // P
    p = pid % P
    if NORMALIZE:
        mean, rstd = _sample_mean_rstd(moments_ptr, b, NUM_CHUNKS, PER_SAMPLE, eps, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    wq = tl.load(wq_ptr + offs_d, mask=mask_d, other=0.0)
    bq = tl.load(bq_ptr)
    rows = x_ptr + b.to(tl.int64) * stride_b + p * stride_p + offs_d * stride_c  # (BLOCK_D,) pointers
    offs_n0 = tl.arange(0, BLOCK_N)
    m = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), axis=0)  # running max of the scores
    total = tl.sum(tl.zeros((BLOCK_N,), dtype=tl.float32), axis=0)  # running sum of exp(score - m)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)  # running sum of exp(score - m) * xhat
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + offs_n0
        mask_n = offs_n < N
        mask = mask_d[:, None] & mask_n[None, :]
        xt = tl.load(rows[:, None] + offs_n[None, :] * stride_n, mask=mask, other=0.0).to(tl.float32)
        if NORMALIZE:
            xt = (xt - mean) * rstd
        xhat = tl.where(mask, xt, 0.0)  # (BLOCK_D, BLOCK_N)
        score = tl.sum(xhat * wq[:, None], axis=0) + bq  # (BLOCK_N,)
        score = tl.where(mask_n, score, float("-inf"))
        m_new = tl.maximum(m, tl.max(score, axis=0))
        alpha = tl.exp(m - m_new)  # 0 on the first chunk (m = -inf)
        e = tl.exp(score - m_new)  # 0 where masked
        total = total * alpha + tl.sum(e, axis=0)
        acc = acc * alpha + tl.sum(xhat * e[None, :], axis=1)
        m = m_new
    tl.store(xbar_ptr + pid.to(tl.int64) * D + offs_d, acc / total, mask=mask_d)


@triton.jit
def _norm_mlp_kernel(
    x_ptr,  # (B, D, P, N), any strides: the input, normalised on the fly (NORMALIZE), and the residual
    moments_ptr,  # (B, NUM_CHUNKS, 3) float32 from _sample_moments_kernel
    gamma_ptr, beta_ptr,  # (D,) float32 GroupNorm affine
    w1_ptr,  # (F, D) contiguous, dot dtype: first 1x1
    b1_ptr,  # (F,) float32
    ctx_ptr,  # (B, P, F) float32 contiguous multiplier of the hidden activation (HAS_CONTEXT only)
    w2_ptr,  # (D, F) contiguous, dot dtype: second 1x1
    b2_ptr,  # (D,) float32
    out_ptr,  # (B, D, P, N) contiguous, x's dtype
    stride_b, stride_c, stride_p, stride_n,
    D, F, P, N,
    NUM_L_TILES,  # cdiv(P * N, BLOCK_L)
    NUM_CHUNKS, PER_SAMPLE, eps,  # as in _score_mean_kernel
    ACTIVATION: tl.constexpr,  # "relu" or "silu"
    HAS_CONTEXT: tl.constexpr,
    BLOCK_L: tl.constexpr,  # pixels per program (N of both dots)
    BLOCK_K: tl.constexpr,  # input channels per step of the first dot (its K)
    BLOCK_F: tl.constexpr,  # hidden channels per chunk (M of the first dot, K of the second)
    BLOCK_D: tl.constexpr,  # >= D, a power of two (M of the second dot)
    BLOCK_C: tl.constexpr,  # >= NUM_CHUNKS, a power of two
    NORMALIZE: tl.constexpr,  # False: xn = x (no GroupNorm; moments, gamma and beta unused)
    RESIDUAL: tl.constexpr,  # add x to the result
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    b = pid // NUM_L_TILES
    offs_l = (pid % NUM_L_TILES) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < P * N
    p = offs_l // N
    cols = x_ptr + b.to(tl.int64) * stride_b + p * stride_p + (offs_l % N) * stride_n  # (BLOCK_L,) pointers
    if NORMALIZE:
        mean, rstd = _sample_mean_rstd(moments_ptr, b, NUM_CHUNKS, PER_SAMPLE, eps, BLOCK_C)
    dot_dtype = tl.float32 if DOT_FP32 else w1_ptr.dtype.element_ty
    offs_k0 = tl.arange(0, BLOCK_K)
    offs_f0 = tl.arange(0, BLOCK_F)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_F):
        offs_f = f0 + offs_f0
        mask_f = offs_f < F
        hid = tl.zeros((BLOCK_F, BLOCK_L), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + offs_k0
            mask_k = offs_k < D
            mask = mask_k[:, None] & mask_l[None, :]
            xn = tl.load(cols[None, :] + offs_k[:, None] * stride_c, mask=mask, other=0.0).to(tl.float32)
            if NORMALIZE:
                gamma = tl.load(gamma_ptr + offs_k, mask=mask_k, other=0.0)
                beta = tl.load(beta_ptr + offs_k, mask=mask_k, other=0.0)
                xn = (xn - mean) * (rstd * gamma[:, None]) + beta[:, None]  # GroupNorm's output, rounded as it is
                xn = tl.where(mask, xn, 0.0)
            xn = xn.to(dot_dtype)  # (BLOCK_K, BLOCK_L)
            w1 = tl.load(w1_ptr + offs_f[:, None] * D + offs_k[None, :], mask=mask_f[:, None] & mask_k[None, :],
                         other=0.0).to(dot_dtype)  # fmt: skip
            hid = tl.dot(w1, xn, hid, input_precision=DOT_PRECISION)
        hid += tl.load(b1_ptr + offs_f, mask=mask_f, other=0.0)[:, None]
        if ACTIVATION == "relu":
            hid = tl.maximum(hid, 0.0)
        else:
            hid = hid * tl.sigmoid(hid)
        if HAS_CONTEXT:
            ctx = tl.load(ctx_ptr + (b * P + p)[None, :].to(tl.int64) * F + offs_f[:, None],
                          mask=mask_f[:, None] & mask_l[None, :], other=0.0)  # fmt: skip
            hid = hid * ctx
        w2 = tl.load(w2_ptr + offs_d[:, None] * F + offs_f[None, :], mask=mask_d[:, None] & mask_f[None, :],
                     other=0.0).to(dot_dtype)  # fmt: skip  (padded hidden rows are 0 and meet zero columns)
        acc = tl.dot(w2, hid.to(dot_dtype), acc, input_precision=DOT_PRECISION)
    acc += tl.load(b2_ptr + offs_d, mask=mask_d, other=0.0)[:, None]
    mask = mask_d[:, None] & mask_l[None, :]
    if RESIDUAL:
        acc += tl.load(cols[None, :] + offs_d[:, None] * stride_c, mask=mask, other=0.0).to(tl.float32)
    out_cols = out_ptr + b.to(tl.int64) * D * P * N + offs_l  # contiguous output
    tl.store(out_cols[None, :] + offs_d[:, None] * (P * N), acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------

MOMENTS_BLOCK = 1024
MAX_MOMENT_CHUNKS = 256  # per sample; the consumers combine them in registers


def _dot_options(dtype: torch.dtype) -> dict:
    dot_fp32 = dtype == torch.bfloat16 and triton_interpreter_enabled()
    return dict(DOT_PRECISION="ieee" if dtype == torch.float32 or dot_fp32 else "tf32", DOT_FP32=dot_fp32)


def _max_offset(t: torch.Tensor) -> int:
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def sample_moments(x: torch.Tensor, num_chunks: int | None = None) -> torch.Tensor:
    """(B, chunks, 3) float32: count, mean and centred sum of squares of consecutive chunks of each sample's
    D * P * N values, which :func:`score_mean` and :func:`norm_mlp` combine into one-group GroupNorm's
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


def score_mean_kernel_arguments(x, moments, eps, wq, bq, xbar, block_n: int | None = None):
    """(positional arguments, constexprs and launch options) of one ``_score_mean_kernel`` launch."""
    B, D, P, N = x.shape
    block_d = max(16, triton.next_power_of_2(D))
    block_n = block_n or max(16, min(128, 8192 // block_d, triton.next_power_of_2(N)))
    if block_n < 1 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    moment_args, block_c = _moments_arguments(x, moments, eps)
    args = (x, moments if moments is not None else wq, wq, bq, xbar, *x.stride(), D, P, N, *moment_args)
    return args, dict(BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_C=block_c, NORMALIZE=moments is not None,
                      num_warps=4 if block_d * block_n <= 4096 else 8)  # fmt: skip


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


def score_mean(x: torch.Tensor, moments, eps, wq, bq, out=None, block_n: int | None = None) -> torch.Tensor:
    """(B, P, D) float32: sum_n softmax_n(wq . xhat[:, p, n] + bq) xhat[:, p, n] for each (b, p), xhat
    normalised with ``moments`` and ``eps`` (xhat = x when ``moments`` is None). ``out``: a preallocated
    contiguous result; ``block_n``: columns per step (a power of two)."""
    B, D, P, N = x.shape
    xbar = torch.empty(B, P, D, dtype=torch.float32, device=x.device) if out is None else out
    args, options = score_mean_kernel_arguments(x, moments, eps, wq, bq, xbar, block_n)
    _score_mean_kernel[(B * P,)](*args, **options)
    return xbar


def _fold_affine(w: torch.Tensor, b: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor):
    """(W diag(gamma), W beta + b) in float32: a 1x1 conv after GroupNorm's affine, as one on xhat."""
    w = w.float()
    return w * gamma.float()[None, :], w @ beta.float() + b.float()


def transformer_layer_forward(
    x: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    w_ffn1: torch.Tensor,
    b_ffn1: torch.Tensor,
    w_ffn2: torch.Tensor,
    b_ffn2: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """The fused layer (arguments as :func:`mobilevitv2_kernels.reference.transformer_layer_forward`,
    validated by the op): (B, d, P, N) contiguous, x's dtype."""
    B, d, P, N = x.shape
    if max(_max_offset(x), d * P * N) >= 2**31:
        raise ValueError("transformer_layer (triton): one sample spans 2**31 elements or more")
    dot_dtype = x.dtype
    w_q, w_k, w_v = torch.split(w_qkv, [1, d, d])
    b_q, b_k, b_v = torch.split(b_qkv, [1, d, d])

    moments = sample_moments(x)
    wq, bq = _fold_affine(w_q, b_q, norm1_weight, norm1_bias)
    xbar = score_mean(x, moments, eps, wq[0].contiguous(), bq)  # (B, P, d)
    wk, bk = _fold_affine(w_k, b_k, norm1_weight, norm1_bias)
    context = torch.addmm(bk, xbar.reshape(B * P, d), wk.t()).reshape(B, P, d)  # key projection of xbar
    h = norm_mlp(x, moments, eps, norm1_weight.float(), norm1_bias.float(), w_v.to(dot_dtype).contiguous(),
                 b_v.float(), context, w_out.to(dot_dtype).contiguous(), b_out.float(), "relu")  # fmt: skip

    return norm_mlp(h, sample_moments(h), eps, norm2_weight.float(), norm2_bias.float(), w_ffn1.to(dot_dtype).contiguous(),
                    b_ffn1.float(), None, w_ffn2.to(dot_dtype).contiguous(), b_ffn2.float(), "silu")  # fmt: skip


def linear_self_attention_forward(
    x: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor
) -> torch.Tensor:
    """The attention module alone, projections included, with the same kernels and identity (arguments as
    :func:`mobilevitv2_kernels.reference.linear_self_attention_forward`, validated by the op): the scores
    and the score-weighted mean of x in one pass, the key projection of that mean as the context, then
    out_proj(ReLU(value_proj(x)) * context) per pixel tile. Two launches and one small matmul; neither qkv
    nor the keys reach memory. (B, d, P, N) contiguous, x's dtype."""
    B, d, P, N = x.shape
    if max(_max_offset(x), d * P * N) >= 2**31:
        raise ValueError("linear_self_attention (triton): one sample spans 2**31 elements or more")
    w_q, w_k, w_v = torch.split(w_qkv, [1, d, d])
    b_q, b_k, b_v = torch.split(b_qkv, [1, d, d])
    xbar = score_mean(x, None, 0.0, w_q[0].float().contiguous(), b_q.float())  # (B, P, d)
    context = torch.addmm(b_k.float(), xbar.reshape(B * P, d), w_k.float().t()).reshape(B, P, d)
    return norm_mlp(x, None, 0.0, None, None, w_v.to(x.dtype).contiguous(), b_v.float(), context,
                    w_out.to(x.dtype).contiguous(), b_out.float(), "relu", residual=False)  # fmt: skip
