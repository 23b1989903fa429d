"""Triton kernel bodies of the separable-attention core: the forward kernel and the backward's two (the
fused one, and the dq reduction taken when a (b, p)'s key/value channels are split over programs). For every
(b, p) of qkv (B, 1+2d, P, N), ``out = relu(v) * sum_N k * softmax_N(q)``, fp32 arithmetic. Their launchers:
:mod:`mobilevitv2_kernels.triton_kernels.separable_attention`. The work split and the backward's algebra:
docs/design.md, "Separable attention (Triton)"."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softmax_stats(q_row, stride_qn, N, BLOCK_N: tl.constexpr):
    """Max and sum of exp(q - max) over the N logits of one query row, in fp32, one block at a time."""
    offs_n = tl.arange(0, BLOCK_N)
    m = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), axis=0)
    l = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs_n
        q = tl.load(q_row + n * stride_qn, mask=n < N, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(q, axis=0))
        l = l * tl.exp(m - m_new) + tl.sum(tl.exp(q - m_new), axis=0)
        m = m_new
    return m, l


@triton.jit
def _separable_attention_fwd_kernel(
    qkv_ptr,  # (B, 1+2D, P, N), any strides
    out_ptr,  # (B, D, P, N), contiguous
    stride_qkv_b,  # qkv.stride(0)
    stride_qkv_c,  # qkv.stride(1)
    stride_qkv_p,  # qkv.stride(2)
    stride_qkv_n,  # qkv.stride(3)
    P,  # patch pixels
    N,  # patches (softmax length)
    D,  # key/value channels
    NUM_D_BLOCKS,  # cdiv(D, BLOCK_D)
    BLOCK_D: tl.constexpr,  # key/value channels per program
    BLOCK_N: tl.constexpr,  # patches per tile (>= N when SINGLE_N)
    SINGLE_N: tl.constexpr,  # N <= BLOCK_N: one pass, every input element loaded once
):
    # 1-D grid, d-blocks fastest: programs that run together share (b, p) and so the query row (L2 hits).
    pid = tl.program_id(0)
    pid_bp = pid // NUM_D_BLOCKS  # b * P + p
    pid_d = pid % NUM_D_BLOCKS  # block of BLOCK_D channels
    b = pid_bp // P
    p = pid_bp % P

    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < D

    base = qkv_ptr + b.to(tl.int64) * stride_qkv_b + p.to(tl.int64) * stride_qkv_p
    q_row = base  # (N,) query channel 0
    k_rows = base + (1 + offs_d).to(tl.int64)[:, None] * stride_qkv_c  # (BLOCK_D, 1) key channels
    v_rows = base + (1 + D + offs_d).to(tl.int64)[:, None] * stride_qkv_c  # (BLOCK_D, 1) value channels
    out_rows = out_ptr + ((b.to(tl.int64) * D + offs_d[:, None]) * P + p) * N  # (BLOCK_D, 1)

    if SINGLE_N:
        mask_n = offs_n < N
        mask = mask_d[:, None] & mask_n[None, :]
        q = tl.load(q_row + offs_n * stride_qkv_n, mask=mask_n, other=float("-inf")).to(tl.float32)
        k = tl.load(k_rows + offs_n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_rows + offs_n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
        e = tl.exp(q - tl.max(q, axis=0))  # (BLOCK_N,), 0 where masked
        context = tl.sum(k * e[None, :], axis=1) / tl.sum(e, axis=0)  # (BLOCK_D,)
        out = tl.maximum(v, 0.0) * context[:, None]
        tl.store(out_rows + offs_n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # Pass 1: online softmax over N blocks; acc holds sum_N k*exp(q - m) for the running max m.
        m = tl.max(tl.full((BLOCK_N,), float("-inf"), tl.float32), axis=0)
        l = tl.sum(tl.zeros((BLOCK_N,), tl.float32), axis=0)
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            mask_n = n < N
            q = tl.load(q_row + n * stride_qkv_n, mask=mask_n, other=float("-inf")).to(tl.float32)
            k = tl.load(
                k_rows + n[None, :] * stride_qkv_n, mask=mask_d[:, None] & mask_n[None, :], other=0.0
            ).to(tl.float32)
            m_new = tl.maximum(m, tl.max(q, axis=0))
            alpha = tl.exp(m - m_new)
            e = tl.exp(q - m_new)
            l = l * alpha + tl.sum(e, axis=0)
            acc = acc * alpha + tl.sum(k * e[None, :], axis=1)
            m = m_new
        context = acc / l
        # Pass 2: out = relu(v) * context.
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            mask = mask_d[:, None] & (n < N)[None, :]
            v = tl.load(v_rows + n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
            out = tl.maximum(v, 0.0) * context[:, None]
            tl.store(out_rows + n[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _separable_attention_bwd_kernel(
    grad_out_ptr,  # (B, D, P, N), any strides
    qkv_ptr,  # (B, 1+2D, P, N), any strides
    grad_qkv_ptr,  # (B, 1+2D, P, N), contiguous; this kernel writes dk, dv (and dq when FUSE_DQ)
    partial_ds_ptr,  # (B*P, SPLIT, N) fp32, contiguous: sum over this program's d of dc*k (unused if FUSE_DQ)
    partial_sum_ptr,  # (B*P, SPLIT) fp32, contiguous: sum over this program's d of dc*c (unused if FUSE_DQ)
    stats_ptr,  # (B*P, 2) fp32, contiguous: softmax max and denominator, written by split 0 (unless FUSE_DQ)
    stride_g_b,  # grad_out.stride(0)
    stride_g_c,  # grad_out.stride(1)
    stride_g_p,  # grad_out.stride(2)
    stride_g_n,  # grad_out.stride(3)
    stride_qkv_b,  # qkv.stride(0)
    stride_qkv_c,  # qkv.stride(1)
    stride_qkv_p,  # qkv.stride(2)
    stride_qkv_n,  # qkv.stride(3)
    P,  # patch pixels
    N,  # patches (softmax length)
    D,  # key/value channels
    NUM_D_BLOCKS,  # cdiv(D, BLOCK_D)
    SPLIT: tl.constexpr,  # programs per (b, p); program j owns d-blocks j, j+SPLIT, ...
    BLOCK_D: tl.constexpr,  # key/value channels per tile
    BLOCK_N: tl.constexpr,  # patches per tile (>= N when SINGLE_N)
    SINGLE_N: tl.constexpr,  # N <= BLOCK_N; otherwise SPLIT == NUM_D_BLOCKS (one d-block per program)
    FUSE_DQ: tl.constexpr,  # SPLIT == 1: this program sees all of d and writes dq itself
):
    pid_bp = tl.program_id(0)  # b * P + p
    pid_s = tl.program_id(1)  # split index
    b = pid_bp // P
    p = pid_bp % P
    b64 = b.to(tl.int64)
    p64 = p.to(tl.int64)

    offs_d0 = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    qkv_base = qkv_ptr + b64 * stride_qkv_b + p64 * stride_qkv_p
    g_base = grad_out_ptr + b64 * stride_g_b + p64 * stride_g_p
    C = 1 + 2 * D
    dqkv_base = grad_qkv_ptr + (b64 * C * P + p64) * N  # channel 0 of (b, :, p, :)
    stride_dqkv_c = P * N

    if SINGLE_N:
        mask_n = offs_n < N
        q = tl.load(qkv_base + offs_n * stride_qkv_n, mask=mask_n, other=float("-inf")).to(tl.float32)
        m = tl.max(q, axis=0)
        e = tl.exp(q - m)
        l = tl.sum(e, axis=0)
        s = e / l  # (BLOCK_N,), 0 where masked
        ds = tl.zeros((BLOCK_N,), tl.float32)  # sum over this program's d of dc*k
        dc_dot_c = tl.sum(tl.zeros((BLOCK_D,), tl.float32), axis=0)  # sum over this program's d of dc*c
        for j in range(pid_s, NUM_D_BLOCKS, SPLIT):
            offs_d = j * BLOCK_D + offs_d0
            mask_d = offs_d < D
            mask = mask_d[:, None] & mask_n[None, :]
            kv_n = offs_n[None, :] * stride_qkv_n
            k = tl.load(qkv_base + (1 + offs_d).to(tl.int64)[:, None] * stride_qkv_c + kv_n, mask=mask, other=0.0)
            v = tl.load(qkv_base + (1 + D + offs_d).to(tl.int64)[:, None] * stride_qkv_c + kv_n, mask=mask, other=0.0)
            g = tl.load(
                g_base + offs_d.to(tl.int64)[:, None] * stride_g_c + offs_n[None, :] * stride_g_n, mask=mask, other=0.0
            )
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            g = g.to(tl.float32)
            c = tl.sum(k * s[None, :], axis=1)  # (BLOCK_D,)
            dc = tl.sum(g * tl.maximum(v, 0.0), axis=1)  # (BLOCK_D,)
            dv = tl.where(v > 0.0, g * c[:, None], 0.0)
            dk = dc[:, None] * s[None, :]
            dk_rows = dqkv_base + (1 + offs_d).to(tl.int64)[:, None] * stride_dqkv_c
            dv_rows = dqkv_base + (1 + D + offs_d).to(tl.int64)[:, None] * stride_dqkv_c
            tl.store(dk_rows + offs_n[None, :], dk.to(grad_qkv_ptr.dtype.element_ty), mask=mask)
            tl.store(dv_rows + offs_n[None, :], dv.to(grad_qkv_ptr.dtype.element_ty), mask=mask)
            ds += tl.sum(dc[:, None] * k, axis=0)
            dc_dot_c += tl.sum(dc * c, axis=0)
        if FUSE_DQ:
            dq = s * (ds - dc_dot_c)
            tl.store(dqkv_base + offs_n, dq.to(grad_qkv_ptr.dtype.element_ty), mask=mask_n)
        else:
            tl.store(partial_ds_ptr + (pid_bp.to(tl.int64) * SPLIT + pid_s) * N + offs_n, ds, mask=mask_n)
            tl.store(partial_sum_ptr + pid_bp * SPLIT + pid_s, dc_dot_c)
            tl.store(stats_ptr + pid_bp * 2, m, mask=pid_s == 0)
            tl.store(stats_ptr + pid_bp * 2 + 1, l, mask=pid_s == 0)
    else:
        # One d-block per program (pid_s); N in blocks. Pass 1 finds the softmax statistics, pass 2 the
        # per-row reductions c and dc, pass 3 writes dk, dv and this block's share of ds (or dq).
        m, l = _softmax_stats(qkv_base, stride_qkv_n, N, BLOCK_N)
        inv_l = 1.0 / l
        offs_d = pid_s * BLOCK_D + offs_d0
        mask_d = offs_d < D
        k_rows = qkv_base + (1 + offs_d).to(tl.int64)[:, None] * stride_qkv_c
        v_rows = qkv_base + (1 + D + offs_d).to(tl.int64)[:, None] * stride_qkv_c
        g_rows = g_base + offs_d.to(tl.int64)[:, None] * stride_g_c
        c = tl.zeros((BLOCK_D,), tl.float32)
        dc = tl.zeros((BLOCK_D,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            mask_n = n < N
            mask = mask_d[:, None] & mask_n[None, :]
            q = tl.load(qkv_base + n * stride_qkv_n, mask=mask_n, other=float("-inf")).to(tl.float32)
            s = tl.exp(q - m) * inv_l
            k = tl.load(k_rows + n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_rows + n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_rows + n[None, :] * stride_g_n, mask=mask, other=0.0).to(tl.float32)
            c += tl.sum(k * s[None, :], axis=1)
            dc += tl.sum(g * tl.maximum(v, 0.0), axis=1)
        dc_dot_c = tl.sum(dc * c, axis=0)
        dk_rows = dqkv_base + (1 + offs_d).to(tl.int64)[:, None] * stride_dqkv_c
        dv_rows = dqkv_base + (1 + D + offs_d).to(tl.int64)[:, None] * stride_dqkv_c
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            mask_n = n < N
            mask = mask_d[:, None] & mask_n[None, :]
            q = tl.load(qkv_base + n * stride_qkv_n, mask=mask_n, other=float("-inf")).to(tl.float32)
            s = tl.exp(q - m) * inv_l
            k = tl.load(k_rows + n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_rows + n[None, :] * stride_qkv_n, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_rows + n[None, :] * stride_g_n, mask=mask, other=0.0).to(tl.float32)
            dv = tl.where(v > 0.0, g * c[:, None], 0.0)
            dk = dc[:, None] * s[None, :]
            tl.store(dk_rows + n[None, :], dk.to(grad_qkv_ptr.dtype.element_ty), mask=mask)
            tl.store(dv_rows + n[None, :], dv.to(grad_qkv_ptr.dtype.element_ty), mask=mask)
            ds = tl.sum(dc[:, None] * k, axis=0)  # (BLOCK_N,)
            if FUSE_DQ:
                dq = s * (ds - dc_dot_c)
                tl.store(dqkv_base + n, dq.to(grad_qkv_ptr.dtype.element_ty), mask=mask_n)
            else:
                tl.store(partial_ds_ptr + (pid_bp.to(tl.int64) * SPLIT + pid_s) * N + n, ds, mask=mask_n)
        if not FUSE_DQ:
            tl.store(partial_sum_ptr + pid_bp * SPLIT + pid_s, dc_dot_c)
            tl.store(stats_ptr + pid_bp * 2, m, mask=pid_s == 0)
            tl.store(stats_ptr + pid_bp * 2 + 1, l, mask=pid_s == 0)


@triton.jit
def _separable_attention_bwd_dq_kernel(
    qkv_ptr,  # (B, 1+2D, P, N), any strides (only the query channel is read)
    grad_qkv_ptr,  # (B, 1+2D, P, N), contiguous; this kernel writes channel 0 (dq)
    partial_ds_ptr,  # (B*P, SPLIT, N) fp32, contiguous
    partial_sum_ptr,  # (B*P, SPLIT) fp32, contiguous
    stats_ptr,  # (B*P, 2) fp32, contiguous: softmax max and denominator
    stride_qkv_b,  # qkv.stride(0)
    stride_qkv_p,  # qkv.stride(2)
    stride_qkv_n,  # qkv.stride(3)
    P,  # patch pixels
    N,  # patches
    D,  # key/value channels
    SPLIT: tl.constexpr,  # partials per (b, p)
    BLOCK_SPLIT: tl.constexpr,  # next power of two >= SPLIT
    BLOCK_N: tl.constexpr,  # patches per program
):
    pid_bp = tl.program_id(0)  # b * P + p
    pid_n = tl.program_id(1)  # block of BLOCK_N patches
    b = pid_bp // P
    p = pid_bp % P
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_s = tl.arange(0, BLOCK_SPLIT)
    mask_n = offs_n < N
    mask_s = offs_s < SPLIT

    m = tl.load(stats_ptr + pid_bp * 2)
    l = tl.load(stats_ptr + pid_bp * 2 + 1)
    dc_dot_c = tl.sum(tl.load(partial_sum_ptr + pid_bp * SPLIT + offs_s, mask=mask_s, other=0.0), axis=0)
    partial_rows = partial_ds_ptr + (pid_bp.to(tl.int64) * SPLIT + offs_s[:, None]) * N
    ds = tl.sum(tl.load(partial_rows + offs_n[None, :], mask=mask_s[:, None] & mask_n[None, :], other=0.0), axis=0)

    q_row = qkv_ptr + b.to(tl.int64) * stride_qkv_b + p.to(tl.int64) * stride_qkv_p
    q = tl.load(q_row + offs_n * stride_qkv_n, mask=mask_n, other=float("-inf")).to(tl.float32)
    s = tl.exp(q - m) / l
    dq = s * (ds - dc_dot_c)
    dq_row = grad_qkv_ptr + (b.to(tl.int64) * (1 + 2 * D) * P + p) * N
    tl.store(dq_row + offs_n, dq.to(grad_qkv_ptr.dtype.element_ty), mask=mask_n)
