"""Triton kernel bodies of the fused MobileNetV2 inverted residual (inference), BatchNorm folded, in two
variants ("recompute": the expand 1x1 once per (output pixel, tap); "halo": once per pixel of a tile's input
halo, through an L2 scratch buffer), and the jit helpers they share; the E-channel expanded activation never
reaches memory. Their launcher: :mod:`mobilevitv2_kernels.triton_kernels.inverted_residual`. Pseudocode,
work splits and register budgets: docs/design.md, "Inverted residual (Triton)"."""

from __future__ import annotations

import triton
import triton.language as tl


# ----------------------------------------------------------------------------------------------------------
# Pieces shared by both kernels (inlined by the compiler)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _expand_silu(
    x_pix,  # (P,) pointers to x[b, 0, ih, iw] of the pixels to expand
    inside,  # (P,) the pixel is inside the image (else its expanded value is the conv padding, 0)
    stride_x_c,
    C_IN,
    w_expand_ptr,
    stride_we_e,
    stride_we_k,
    b_exp,  # (BLOCK_E,) float32 expand bias of this chunk
    offs_e,  # (BLOCK_E,) expanded channels of this chunk
    mask_e,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """SiLU(w_expand[offs_e] @ x[:, pixels] + b_expand), 0 outside the image: (BLOCK_E, P) float32."""
    dot_dtype = tl.float32 if DOT_FP32 else w_expand_ptr.dtype.element_ty
    h = tl.zeros((offs_e.shape[0], x_pix.shape[0]), dtype=tl.float32)
    offs_k0 = tl.arange(0, BLOCK_K)
    for k0 in range(0, C_IN, BLOCK_K):
        offs_k = k0 + offs_k0
        mask_k = offs_k < C_IN
        wt = tl.load(
            w_expand_ptr + offs_e[:, None] * stride_we_e + offs_k[None, :] * stride_we_k,
            mask=mask_e[:, None] & mask_k[None, :],
            other=0.0,
        ).to(dot_dtype)  # (BLOCK_E, BLOCK_K)
        xt = tl.load(
            x_pix[None, :] + offs_k[:, None] * stride_x_c,
            mask=mask_k[:, None] & inside[None, :],
            other=0.0,
        ).to(dot_dtype)  # (BLOCK_K, P)
        h = tl.dot(wt, xt, h, input_precision=DOT_PRECISION)
    h = h + b_exp[:, None]
    h = h * tl.sigmoid(h)
    return tl.where(inside[None, :], h, 0.0)  # zero padding of the expanded map, not SiLU(b_expand)


@triton.jit
def _reduce_step(
    acc,  # (BLOCK_CO, P) float32 output accumulator
    dw,  # (BLOCK_E, P) float32 depthwise sums of this E chunk, before bias and SiLU
    offs_e,
    mask_e,
    b_dw_ptr,
    stride_bd,
    w_reduce_ptr,
    stride_wr_c,
    stride_wr_e,
    offs_co,
    mask_co,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """acc + w_reduce[offs_co, offs_e] @ SiLU(dw + b_dw)."""
    dot_dtype = tl.float32 if DOT_FP32 else w_reduce_ptr.dtype.element_ty
    b_d = tl.load(b_dw_ptr + offs_e * stride_bd, mask=mask_e, other=0.0).to(tl.float32)
    dw = dw + b_d[:, None]
    dw = dw * tl.sigmoid(dw)  # padded channels (e >= E) are SiLU(0) = 0 and meet zero w_reduce columns
    wr = tl.load(
        w_reduce_ptr + offs_co[:, None] * stride_wr_c + offs_e[None, :] * stride_wr_e,
        mask=mask_co[:, None] & mask_e[None, :],
        other=0.0,
    ).to(dot_dtype)  # (BLOCK_CO, BLOCK_E)
    return tl.dot(wr, dw.to(dot_dtype), acc, input_precision=DOT_PRECISION)


@triton.jit
def _store_output(
    acc,  # (BLOCK_CO, P) float32
    offs_co,
    mask_co,
    mask_p,  # (P,) the output pixel exists
    b_reduce_ptr,
    stride_br,
    x_center,  # (P,) pointers to x[b, 0, oh, ow] (read for the residual only)
    stride_x_c,
    out_pix,  # (P,) pointers to out[b, 0, oh, ow]
    stride_o_c,
    RESIDUAL: tl.constexpr,
):
    """out = acc + b_reduce (+ x), in out's dtype."""
    acc += tl.load(b_reduce_ptr + offs_co * stride_br, mask=mask_co, other=0.0).to(tl.float32)[:, None]
    mask = mask_co[:, None] & mask_p[None, :]
    if RESIDUAL:
        acc += tl.load(x_center[None, :] + offs_co[:, None] * stride_x_c, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_pix[None, :] + offs_co[:, None] * stride_o_c, acc.to(out_pix.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Variant "recompute": the expand 1x1 evaluated once per (output pixel, tap)
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _inverted_residual_fwd_kernel(
    x_ptr,  # (B, C_IN, H, W), any strides; x's dtype is the dot dtype
    w_expand_ptr,  # (E, C_IN), any strides (the launcher passes x's dtype, contiguous)
    b_expand_ptr,  # (E,), any stride
    w_dw_ptr,  # (E, 9), any strides: tap t = 3*kh + kw
    b_dw_ptr,  # (E,), any stride
    w_reduce_ptr,  # (C_OUT, E), any strides (the launcher passes x's dtype, contiguous)
    b_reduce_ptr,  # (C_OUT,), any stride
    out_ptr,  # (B, C_OUT, H_OUT, W_OUT), any strides, x's dtype
    stride_x_b,  # x.stride(0)
    stride_x_c,  # x.stride(1)
    stride_x_h,  # x.stride(2)
    stride_x_w,  # x.stride(3)
    stride_we_e,  # w_expand.stride(0)
    stride_we_k,  # w_expand.stride(1)
    stride_be,  # b_expand.stride(0)
    stride_wd_e,  # w_dw.stride(0)
    stride_wd_t,  # w_dw.stride(1)
    stride_bd,  # b_dw.stride(0)
    stride_wr_c,  # w_reduce.stride(0)
    stride_wr_e,  # w_reduce.stride(1)
    stride_br,  # b_reduce.stride(0)
    stride_o_b,  # out.stride(0)
    stride_o_c,  # out.stride(1)
    stride_o_h,  # out.stride(2)
    stride_o_w,  # out.stride(3)
    C_IN,  # input channels
    E,  # expanded channels
    C_OUT,  # output channels
    H,  # input height
    W,  # input width
    H_OUT,  # output height, ceil(H / STRIDE)
    W_OUT,  # output width, ceil(W / STRIDE)
    NUM_PIXELS,  # B * H_OUT * W_OUT
    NUM_CO_BLOCKS,  # cdiv(C_OUT, BLOCK_CO)
    STRIDE: tl.constexpr,  # depthwise stride, 1 or 2
    DILATION: tl.constexpr,  # depthwise dilation (= its padding)
    RESIDUAL: tl.constexpr,  # add x (STRIDE == 1 and C_IN == C_OUT)
    HAS_EXPAND: tl.constexpr,  # False: no expand 1x1 (E == C_IN; the depthwise conv reads x itself)
    BLOCK_P: tl.constexpr,  # output pixels per program (N of both dots)
    BLOCK_K: tl.constexpr,  # input channels per expand-dot step (K of the expand dot)
    BLOCK_E: tl.constexpr,  # expanded channels per chunk (M of the expand dot, K of the reduce dot)
    BLOCK_CO: tl.constexpr,  # output channels per program (M of the reduce dot)
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 dots; ignored for 16-bit inputs
    DOT_FP32: tl.constexpr,  # feed the dots in float32 (only for bfloat16 under the interpreter, see launcher)
):
    pid = tl.program_id(0)
    pid_p = pid // NUM_CO_BLOCKS  # pixel tile
    pid_co = pid % NUM_CO_BLOCKS  # output-channel block (fastest: neighbours share the pixel tile)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) flattened (b, oh, ow)
    mask_p = offs_p < NUM_PIXELS
    hw_out = H_OUT * W_OUT
    b = offs_p // hw_out
    oh = (offs_p % hw_out) // W_OUT
    ow = offs_p % W_OUT
    x_batch = x_ptr + b.to(tl.int64) * stride_x_b  # (BLOCK_P,) pointers to x[b, 0, 0, 0]

    offs_e0 = tl.arange(0, BLOCK_E)
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < C_OUT

    # Every tile is (channels, pixels): pixels are the last dimension, spread across the threads of a
    # warp, so the per-pixel index vectors (oh, ow, masks, row pointers) cost a register or two per thread,
    # and NCHW loads and stores are coalesced along the pixels of an image row.
    acc = tl.zeros((BLOCK_CO, BLOCK_P), dtype=tl.float32)
    for e0 in range(0, E, BLOCK_E):
        offs_e = e0 + offs_e0
        mask_e = offs_e < E
        if HAS_EXPAND:
            b_exp = tl.load(b_expand_ptr + offs_e * stride_be, mask=mask_e, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK_E, BLOCK_P), dtype=tl.float32)
        for t in range(9):  # a loop, not unrolled: nine copies of the tap's pointers would all stay live
            ih = oh * STRIDE + (t // 3 - 1) * DILATION
            iw = ow * STRIDE + (t % 3 - 1) * DILATION
            inside = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # (BLOCK_P,)
            x_tap = x_batch + (ih * stride_x_h + iw * stride_x_w)  # (BLOCK_P,) pointers; int32 offsets
            if HAS_EXPAND:
                h = _expand_silu(x_tap, inside, stride_x_c, C_IN, w_expand_ptr, stride_we_e, stride_we_k, b_exp,
                                 offs_e, mask_e, BLOCK_K, DOT_PRECISION, DOT_FP32)  # fmt: skip
            else:  # the depthwise conv of x itself: channels e of x at the tap, 0 outside the image
                h = tl.load(x_tap[None, :] + offs_e[:, None] * stride_x_c, mask=mask_e[:, None] & inside[None, :],
                            other=0.0).to(tl.float32)  # fmt: skip
            w_tap = tl.load(w_dw_ptr + offs_e * stride_wd_e + t * stride_wd_t, mask=mask_e, other=0.0)
            dw += h * w_tap.to(tl.float32)[:, None]
        acc = _reduce_step(acc, dw, offs_e, mask_e, b_dw_ptr, stride_bd, w_reduce_ptr, stride_wr_c, stride_wr_e,
                           offs_co, mask_co, DOT_PRECISION, DOT_FP32)  # fmt: skip

    x_center = x_batch + (oh * stride_x_h + ow * stride_x_w)
    out_pix = out_ptr + b.to(tl.int64) * stride_o_b + (oh * stride_o_h + ow * stride_o_w)  # (BLOCK_P,) pointers
    _store_output(acc, offs_co, mask_co, mask_p, b_reduce_ptr, stride_br, x_center, stride_x_c, out_pix, stride_o_c,
                  RESIDUAL)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Variant "halo": the expand 1x1 evaluated once per pixel of a 2-D tile's input halo, through a scratch buffer
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _inverted_residual_halo_fwd_kernel(
    x_ptr, w_expand_ptr, b_expand_ptr, w_dw_ptr, b_dw_ptr, w_reduce_ptr, b_reduce_ptr, out_ptr,  # as above
    scratch_ptr,  # (NUM_PROGRAMS, BLOCK_E, HALO_PAD) contiguous: each program's expanded halo chunk
    stride_x_b, stride_x_c, stride_x_h, stride_x_w,
    stride_we_e, stride_we_k, stride_be, stride_wd_e, stride_wd_t, stride_bd,
    stride_wr_c, stride_wr_e, stride_br,
    stride_o_b, stride_o_c, stride_o_h, stride_o_w,
    C_IN, E, C_OUT, H, W, H_OUT, W_OUT,  # as above
    TILES_H,  # cdiv(H_OUT, TILE_H)
    TILES_W,  # cdiv(W_OUT, TILE_W)
    NUM_CO_BLOCKS,  # cdiv(C_OUT, BLOCK_CO)
    NUM_WORK,  # B * TILES_H * TILES_W * NUM_CO_BLOCKS work items, handed out round-robin
    NUM_PROGRAMS,  # the grid: each program loops over work items pid, pid + NUM_PROGRAMS, ...
    STRIDE: tl.constexpr,
    DILATION: tl.constexpr,
    RESIDUAL: tl.constexpr,
    TILE_H: tl.constexpr,  # output rows per tile
    TILE_W: tl.constexpr,  # output columns per tile; TILE_H * TILE_W (a power of two) = N of the reduce dot
    HALO_W: tl.constexpr,  # (TILE_W - 1) * STRIDE + 1 + 2 * DILATION input columns of the halo
    HALO: tl.constexpr,  # HALO_H * HALO_W input pixels of the halo, HALO_H = (TILE_H - 1) * STRIDE + 1 + 2 * DILATION
    HALO_PAD: tl.constexpr,  # HALO rounded up to a multiple of BLOCK_HP
    BLOCK_HP: tl.constexpr,  # halo pixels per expand dot (its N)
    BLOCK_K: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_CO: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    slot = scratch_ptr + pid.to(tl.int64) * (BLOCK_E * HALO_PAD)  # this program's scratch, reused per item
    offs_e0 = tl.arange(0, BLOCK_E)
    offs_hp0 = tl.arange(0, BLOCK_HP)
    offs_q = tl.arange(0, TILE_H * TILE_W)  # output pixels of the tile, row-major
    qy = offs_q // TILE_W
    qx = offs_q % TILE_W
    scratch_e = slot + offs_e0[:, None] * HALO_PAD  # (BLOCK_E, 1) row pointers of the scratch chunk
    window = (qy * STRIDE) * HALO_W + qx * STRIDE  # (TILE,) halo index of tap (0, 0) of each output pixel
    tiles_per_image = TILES_H * TILES_W
    for work in range(pid, NUM_WORK, NUM_PROGRAMS):
        tile = work // NUM_CO_BLOCKS
        pid_co = work % NUM_CO_BLOCKS  # output-channel blocks of a tile adjacent (they share its halo)
        b = tile // tiles_per_image
        oh0 = ((tile % tiles_per_image) // TILES_W) * TILE_H
        ow0 = (tile % TILES_W) * TILE_W
        ih0 = oh0 * STRIDE - DILATION  # input position of halo pixel (0, 0)
        iw0 = ow0 * STRIDE - DILATION
        x_b = x_ptr + b.to(tl.int64) * stride_x_b
        oh = oh0 + qy
        ow = ow0 + qx
        mask_p = (oh < H_OUT) & (ow < W_OUT)
        offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        mask_co = offs_co < C_OUT

        acc = tl.zeros((BLOCK_CO, TILE_H * TILE_W), dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + offs_e0
            mask_e = offs_e < E
            b_exp = tl.load(b_expand_ptr + offs_e * stride_be, mask=mask_e, other=0.0).to(tl.float32)
            # 1. Expand every halo pixel once, into the scratch chunk (BLOCK_E, HALO_PAD).
            for hp0 in range(0, HALO_PAD, BLOCK_HP):
                offs_hp = hp0 + offs_hp0
                ih = ih0 + offs_hp // HALO_W
                iw = iw0 + offs_hp % HALO_W
                inside = (offs_hp < HALO) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_pix = x_b + (ih * stride_x_h + iw * stride_x_w)
                h = _expand_silu(x_pix, inside, stride_x_c, C_IN, w_expand_ptr, stride_we_e, stride_we_k, b_exp,
                                 offs_e, mask_e, BLOCK_K, DOT_PRECISION, DOT_FP32)  # fmt: skip
                tl.store(scratch_e + offs_hp[None, :], h.to(scratch_ptr.dtype.element_ty))
            tl.debug_barrier()  # the whole chunk is written before any thread reads its neighbours' pixels
            # 2. Depthwise 3x3: nine shifted windows of the scratch chunk (L1/L2 hits).
            dw = tl.zeros((BLOCK_E, TILE_H * TILE_W), dtype=tl.float32)
            for t in range(9):  # tap t reads the window shifted by a scalar
                shift = (t // 3) * DILATION * HALO_W + (t % 3) * DILATION
                h = tl.load(scratch_e + (window + shift)[None, :]).to(tl.float32)  # padded e rows hold 0
                w_tap = tl.load(w_dw_ptr + offs_e * stride_wd_e + t * stride_wd_t, mask=mask_e, other=0.0)
                dw += h * w_tap.to(tl.float32)[:, None]
            tl.debug_barrier()  # every read done before the next chunk (or work item) overwrites the scratch
            # 3. Reduce 1x1 of this chunk into the accumulator.
            acc = _reduce_step(acc, dw, offs_e, mask_e, b_dw_ptr, stride_bd, w_reduce_ptr, stride_wr_c,
                               stride_wr_e, offs_co, mask_co, DOT_PRECISION, DOT_FP32)  # fmt: skip

        x_center = x_b + (oh * stride_x_h + ow * stride_x_w)
        out_pix = out_ptr + b.to(tl.int64) * stride_o_b + (oh * stride_o_h + ow * stride_o_w)
        _store_output(acc, offs_co, mask_co, mask_p, b_reduce_ptr, stride_br, x_center, stride_x_c, out_pix,
                      stride_o_c, RESIDUAL)  # fmt: skip
