"""Triton kernel bodies of the fused MobileViTV2 transformer layer (inference) and of the attention module
alone: per-sample GroupNorm moments, the scores and context of each (b, p), and the fused norm + two-dot MLP
per pixel tile (value projection, ReLU, context and output projection; or the FFN), with their shared
prologue. Their launchers: :mod:`mobilevitv2_kernels.triton_kernels.transformer_layer`. The identities and
the work split: docs/design.md, "Transformer layer (Triton)"."""

from __future__ import annotations

import triton
import triton.language as tl


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
    zero = tl.sum(tl.zeros((BLOCK,), dtype=tl.float32), axis=0)
    count, mean, centred = zero, zero, zero  # of the blocks so far
    for e0 in range(start, stop, BLOCK):  # one pass: each block's own moments, merged (Chan et al.)
        e = e0 + offs0
        valid = e < stop
        c = e // (P * N)
        pn = e % (P * N)
        v = tl.load(x_b + c * stride_c + (pn // N) * stride_p + (pn % N) * stride_n, mask=valid, other=0.0)
        v = v.to(tl.float32)
        block_count = tl.sum(valid.to(tl.float32), axis=0)  # >= 1: e0 < stop
        block_mean = tl.sum(v, axis=0) / block_count
        dev = tl.where(valid, v - block_mean, 0.0)
        merged = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / merged)
        centred += tl.sum(dev * dev, axis=0) + delta * delta * (count * block_count / merged)
        count = merged
    out = partial_ptr + (b * NUM_CHUNKS + chunk) * 3
    tl.store(out, count)
    tl.store(out + 1, mean)
    tl.store(out + 2, centred)


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
def _score_context_kernel(
    x_ptr,  # (B, D, P, N), any strides
    moments_ptr,  # (B, NUM_CHUNKS, 3) float32 from _sample_moments_kernel (NORMALIZE only)
    gamma_ptr, beta_ptr,  # (D,) GroupNorm affine, any float dtype (NORMALIZE only)
    w_qkv_ptr,  # (1 + 2D, D) the qkv projection, rows [query, keys, values], row stride stride_w, unit columns
    b_qkv_ptr,  # (1 + 2D,) its bias
    ctx_ptr,  # (B, P, D) float32 output: the context vector of each (b, p)
    stride_b, stride_c, stride_p, stride_n,
    stride_w,
    D, P, N,
    NUM_CHUNKS, PER_SAMPLE, eps,  # the moments' chunks per sample, D * P * N (float), GroupNorm's epsilon
    BLOCK_D: tl.constexpr,  # >= D, a power of two
    BLOCK_N: tl.constexpr,  # columns per step
    BLOCK_O: tl.constexpr,  # context channels per step of the key projection
    BLOCK_C: tl.constexpr,  # >= NUM_CHUNKS, a power of two
    NORMALIZE: tl.constexpr,  # False: the attention sees x itself (no GroupNorm; moments, gamma, beta unused)
):  # fmt: skip
    pid = tl.program_id(0)  # b * P + p
    b = pid // P
    p = pid % P
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    # The query on xhat: w_q . (gamma * xhat + beta) + b_q = (w_q * gamma) . xhat + (w_q . beta + b_q).
    wq = tl.load(w_qkv_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bq = tl.load(b_qkv_ptr).to(tl.float32)
    if NORMALIZE:
        mean, rstd = _sample_mean_rstd(moments_ptr, b, NUM_CHUNKS, PER_SAMPLE, eps, BLOCK_C)
        gamma = tl.load(gamma_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        bq += tl.sum(wq * beta, axis=0)
        wq = wq * gamma
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
    xbar = acc / total  # the score-weighted mean of the (normalised) columns: (BLOCK_D,)
    if NORMALIZE:
        xbar = tl.where(mask_d, xbar * gamma + beta, 0.0)  # ... of GroupNorm's output, as the keys see it
    # The context: the key projection of that mean (the scores sum to one), W_k xbar + b_k.
    offs_o0 = tl.arange(0, BLOCK_O)
    ctx_row = ctx_ptr + pid.to(tl.int64) * D
    for o0 in range(0, D, BLOCK_O):
        offs_o = o0 + offs_o0
        mask_o = offs_o < D
        wk = tl.load(w_qkv_ptr + (1 + offs_o)[:, None] * stride_w + offs_d[None, :],
                     mask=mask_o[:, None] & mask_d[None, :], other=0.0).to(tl.float32)  # fmt: skip
        bk = tl.load(b_qkv_ptr + 1 + offs_o, mask=mask_o, other=0.0).to(tl.float32)
        tl.store(ctx_row + offs_o, tl.sum(wk * xbar[None, :], axis=1) + bk, mask=mask_o)


@triton.jit
def _norm_mlp_kernel(
    x_ptr,  # (B, D, P, N), any strides: the input, normalised on the fly (NORMALIZE), and the residual
    moments_ptr,  # (B, NUM_CHUNKS, 3) float32 from _sample_moments_kernel
    gamma_ptr, beta_ptr,  # (D,) GroupNorm affine, any float dtype (NORMALIZE only)
    w1_ptr,  # (F, D) contiguous rows, dot dtype: first 1x1
    b1_ptr,  # (F,) any float dtype
    ctx_ptr,  # (B, P, F) float32 contiguous multiplier of the hidden activation (HAS_CONTEXT only)
    w2_ptr,  # (D, F) contiguous, dot dtype: second 1x1
    b2_ptr,  # (D,) any float dtype
    out_ptr,  # (B, D, P, N) contiguous, x's dtype
    stride_b, stride_c, stride_p, stride_n,
    D, F, P, N,
    NUM_L_TILES,  # cdiv(P * N, BLOCK_L)
    NUM_CHUNKS, PER_SAMPLE, eps,  # as in _score_context_kernel
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
                gamma = tl.load(gamma_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
                beta = tl.load(beta_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
                xn = (xn - mean) * (rstd * gamma[:, None]) + beta[:, None]  # GroupNorm's output, rounded as it is
                xn = tl.where(mask, xn, 0.0)
            xn = xn.to(dot_dtype)  # (BLOCK_K, BLOCK_L)
            w1 = tl.load(w1_ptr + offs_f[:, None] * D + offs_k[None, :], mask=mask_f[:, None] & mask_k[None, :],
                         other=0.0).to(dot_dtype)  # fmt: skip
            hid = tl.dot(w1, xn, hid, input_precision=DOT_PRECISION)
        hid += tl.load(b1_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)[:, None]
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
    acc += tl.load(b2_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    mask = mask_d[:, None] & mask_l[None, :]
    if RESIDUAL:
        acc += tl.load(cols[None, :] + offs_d[:, None] * stride_c, mask=mask, other=0.0).to(tl.float32)
    out_cols = out_ptr + b.to(tl.int64) * D * P * N + offs_l  # contiguous output
    tl.store(out_cols[None, :] + offs_d[:, None] * (P * N), acc.to(out_ptr.dtype.element_ty), mask=mask)
