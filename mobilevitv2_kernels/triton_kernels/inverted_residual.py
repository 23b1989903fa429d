"""Triton kernels for the fused MobileNetV2 inverted residual (inference), BatchNorm folded, in two
variants ("recompute": the expand 1x1 once per (output pixel, tap); "halo": once per pixel of a tile's
input halo, through an L2 scratch buffer), and their launcher; the E-channel expanded activation never
reaches memory. The pseudocode, work splits, register budgets and the variant rule: docs/design.md,
"Inverted residual (Triton)". One file for the op family (over 400 lines): both variants share the jit
helpers and the launch configuration."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilevitv2_kernels.common import output_memory_format, triton_interpreter_enabled
from mobilevitv2_kernels.triton_kernels.launch import on_tensor_device
from mobilevitv2_kernels.weights import InvertedResidualWeights


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


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------

VARIANTS = ("recompute", "halo")


def choose_variant(stride: int, variant: str | None = None) -> str:
    """The kernel variant for a launch: ``variant`` when given, else the automatic rule.

    PROVISIONAL automatic rule, to be decided by GPU measurements (``bench/gpu_check_kernels.py`` times both
    variants at the width-1.0 shapes): "halo" at stride 1 (it executes ~1.4-1.9x the unfused expand FLOPs
    where "recompute" executes 9x), "recompute" at stride 2 (2.25x there, and no scratch buffer).
    """
    if variant is None:
        return "halo" if stride == 1 else "recompute"
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS} or None, got {variant!r}")
    return variant


def _block(n: int, cap: int) -> int:
    """A power-of-two tile >= 16 (tl.dot's minimum) covering ``n`` up to ``cap``."""
    return max(16, min(triton.next_power_of_2(max(n, 1)), cap))


def _check_tile(name: str, value: int, minimum: int = 16) -> int:
    if value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum} (tl.dot's minimum is 16), got {value}")
    return value


def launch_config(
    dtype: torch.dtype,
    c_in: int,
    e: int,
    c_out: int,
    *,
    variant: str = "recompute",
    expand: bool = True,
    block_p: int | None = None,
    block_k: int | None = None,
    block_e: int | None = None,
    block_co: int | None = None,
    tile_h: int | None = None,
    tile_w: int | None = None,
    block_hp: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> dict[str, int | str]:
    """The tiles, warps and pipeline stages the launcher uses for these channel counts and ``variant``
    ("recompute" or "halo"; any given value overrides the heuristic). ``block_p`` belongs to "recompute",
    ``tile_h``, ``tile_w`` and ``block_hp`` to "halo"; ``expand=False`` is a block without expand conv.
    Exposed so that the sm_90 compile test checks exactly these configurations."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    block_k = _check_tile("block_k", block_k or _block(c_in, 64))
    # Expanded channels per chunk: 64, but 16 for float32 "recompute" and 32 for 16-bit "halo", where 64
    # spills on sm_90 with Triton 3.6 (the GPU image's) or 3.8 (these compile clean with both).
    if dtype == torch.float32:
        e_cap = 16 if variant == "recompute" else 64
    else:
        e_cap = 64 if variant == "recompute" else 32
    block_e = _check_tile("block_e", block_e or _block(e, e_cap))
    # Up to 256 output channels in one program (so the expand work is not repeated per channel block), but
    # 128 for float32, whose IEEE dots need more registers (256 spills there; see the module docstring), and
    # 128 beyond 256 output channels, which take several blocks anyway: Triton 3.6 (the GPU image's) spills
    # at 256 for layer.4's 384 -> 768 -> 512 block where 3.8 does not.
    # Without an expand conv there is nothing to repeat per channel block (the taps are loads), so 128.
    wide = 128 < c_out <= 256 and dtype != torch.float32 and expand
    block_co = _check_tile("block_co", block_co or _block(c_out, 256 if wide else 128))
    cfg: dict[str, int | str] = dict(variant=variant, block_k=block_k, block_e=block_e, block_co=block_co)
    if variant == "recompute":
        if tile_h or tile_w or block_hp:
            raise ValueError("tile_h, tile_w and block_hp are settings of the 'halo' variant")
        cfg["block_p"] = pixels = _check_tile("block_p", block_p or 64)
    else:
        if block_p:
            raise ValueError("block_p is a setting of the 'recompute' variant (the halo one has tile_h, tile_w)")
        # 8 x 16 output pixels (stride 1, dilation 1: a 10 x 18 halo, 1.41x, executed 192/128 = 1.5x in
        # BLOCK_HP=32 steps); 8 x 8 (100 -> 128: 2x) for float32 or 256 output channels, whose 8 x 16
        # tiles spill on sm_90 (see the module docstring).
        cfg["tile_h"] = _check_tile("tile_h", tile_h or 8, minimum=1)
        narrow = block_co > 128 or dtype == torch.float32
        cfg["tile_w"] = _check_tile("tile_w", tile_w or (8 if narrow else 16), minimum=1)
        pixels = _check_tile("tile_h * tile_w", cfg["tile_h"] * cfg["tile_w"])
        cfg["block_hp"] = _check_tile("block_hp", block_hp or 32)
    if num_warps is None:
        num_warps = 8 if max(block_co, block_e) * pixels >= 4096 else 4
    cfg["num_warps"] = num_warps
    cfg["num_stages"] = num_stages or 2
    return cfg


def halo_geometry(cfg: dict, stride: int, dilation: int) -> dict[str, int]:
    """Input halo of a (tile_h, tile_w) output tile: its rows, columns, pixels, and pixels rounded up to a
    multiple of block_hp (the scratch row length); ``factor`` = expanded pixels executed per output pixel."""
    halo_h = (cfg["tile_h"] - 1) * stride + 1 + 2 * dilation
    halo_w = (cfg["tile_w"] - 1) * stride + 1 + 2 * dilation
    halo = halo_h * halo_w
    halo_pad = triton.cdiv(halo, cfg["block_hp"]) * cfg["block_hp"]
    factor = halo_pad / (cfg["tile_h"] * cfg["tile_w"])
    return dict(halo_h=halo_h, halo_w=halo_w, halo=halo, halo_pad=halo_pad, factor=factor)


def halo_num_work(B: int, H_out: int, W_out: int, C_out: int, cfg: dict) -> int:
    """Work items of the halo kernel: (image, output tile, output-channel block)."""
    tiles = triton.cdiv(H_out, cfg["tile_h"]) * triton.cdiv(W_out, cfg["tile_w"])
    return B * tiles * triton.cdiv(C_out, cfg["block_co"])


def default_num_programs(device: torch.device, num_work: int) -> int:
    """Programs of the (persistent) halo kernel, each with its scratch slot: PROVISIONAL two per SM on CUDA,
    so that the scratch (2 x SMs x slot, ~13 MB fp32 on an H100 at the defaults) stays in L2; four on the
    CPU (the interpreter runs programs one after another anyway)."""
    if device.type == "cuda":
        slots = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        slots = 4
    return max(1, min(num_work, slots))


def _max_offset(t: torch.Tensor) -> int:
    """Largest element offset inside one image of a (B, C, H, W) tensor (the kernel's int32 part)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def _tensor_args(x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out) -> tuple:
    """Strides and sizes both kernels take after their pointers, in their common order (w_expand and
    b_expand None: no expand conv, E = C_in)."""
    B, C_in, H, W = x.shape
    expand_strides = (0, 0, 0) if w_expand is None else (*w_expand.stride(), b_expand.stride(0))
    return (
        *x.stride(), *expand_strides, *w_dw.stride(), b_dw.stride(0),
        *w_reduce.stride(), b_reduce.stride(0), *out.stride(),
        C_in, w_dw.shape[0], w_reduce.shape[0], H, W, out.shape[2], out.shape[3],
    )  # fmt: skip


def _common_meta(x, stride, dilation, residual, cfg) -> dict:
    # Triton 3.8's interpreter multiplies bfloat16 dot operands as their raw uint16 bit patterns. Under the
    # interpreter, bfloat16 operands are therefore widened to float32 (exact), which gives the same result as
    # a bfloat16 tensor-core dot with float32 accumulation; compiled kernels use the bfloat16 dot.
    dot_fp32 = x.dtype == torch.bfloat16 and triton_interpreter_enabled()
    return dict(
        STRIDE=stride,
        DILATION=dilation,
        RESIDUAL=bool(residual),
        BLOCK_K=cfg["block_k"],
        BLOCK_E=cfg["block_e"],
        BLOCK_CO=cfg["block_co"],
        DOT_PRECISION="ieee" if x.dtype == torch.float32 or dot_fp32 else "tf32",
        DOT_FP32=dot_fp32,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )


def kernel_arguments(x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out, stride, dilation, residual, cfg):
    """(positional arguments, constexprs and launch options, grid) of one "recompute" kernel launch, for
    tensors already prepared by :func:`inverted_residual_forward` (1x1 weights in x's dtype, w_dw as (E, 9);
    w_expand and b_expand None for a block without expand conv). Separate so that the sm_90 compile test
    specialises the kernel exactly as the JIT does for real arguments."""
    num_co_blocks = triton.cdiv(w_reduce.shape[0], cfg["block_co"])
    num_pixels = x.shape[0] * out.shape[2] * out.shape[3]
    grid = (triton.cdiv(num_pixels, cfg["block_p"]) * num_co_blocks,)
    has_expand = w_expand is not None
    args = (
        x, w_expand if has_expand else w_dw, b_expand if has_expand else b_dw, w_dw, b_dw, w_reduce, b_reduce, out,
        *_tensor_args(x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out), num_pixels, num_co_blocks,
    )  # fmt: skip
    meta = _common_meta(x, stride, dilation, residual, cfg)
    meta["BLOCK_P"] = cfg["block_p"]
    meta["HAS_EXPAND"] = has_expand
    return args, meta, grid


def halo_kernel_arguments(
    x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out, scratch, stride, dilation, residual, cfg
):
    """As :func:`kernel_arguments`, for the "halo" kernel; ``scratch`` is (num_programs, block_e, halo_pad),
    contiguous (see :func:`halo_geometry`), and its first dimension sets the grid."""
    B, C_out, H_out, W_out = out.shape
    geo = halo_geometry(cfg, stride, dilation)
    num_programs = scratch.shape[0]
    if tuple(scratch.shape) != (num_programs, cfg["block_e"], geo["halo_pad"]) or not scratch.is_contiguous():
        raise ValueError(f"scratch must be contiguous ({num_programs}, {cfg['block_e']}, {geo['halo_pad']})")
    args = (
        x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out, scratch,
        *_tensor_args(x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out),
        triton.cdiv(H_out, cfg["tile_h"]), triton.cdiv(W_out, cfg["tile_w"]), triton.cdiv(C_out, cfg["block_co"]),
        halo_num_work(B, H_out, W_out, C_out, cfg), num_programs,
    )  # fmt: skip
    meta = _common_meta(x, stride, dilation, residual, cfg)
    meta.update(TILE_H=cfg["tile_h"], TILE_W=cfg["tile_w"], HALO_W=geo["halo_w"], HALO=geo["halo"],
                HALO_PAD=geo["halo_pad"], BLOCK_HP=cfg["block_hp"])  # fmt: skip
    return args, meta, (num_programs,)


@on_tensor_device
def inverted_residual_forward(
    x: torch.Tensor,
    weights: InvertedResidualWeights,
    stride: int,
    dilation: int,
    residual: bool,
    *,
    variant: str | None = None,
    out: torch.Tensor | None = None,
    block_p: int | None = None,
    block_k: int | None = None,
    block_e: int | None = None,
    block_co: int | None = None,
    tile_h: int | None = None,
    tile_w: int | None = None,
    block_hp: int | None = None,
    num_programs: int | None = None,
    scratch_dtype: torch.dtype = torch.float32,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The fused block for x (B, C_in, H, W) -> (B, C_out, ceil(H/stride), ceil(W/stride)), x's dtype.

    Arguments as in :func:`mobilevitv2_kernels.reference.inverted_residual_forward` (already validated by
    the op). ``variant``: "recompute", "halo" or None (the PROVISIONAL rule of :func:`choose_variant`: halo
    at stride 1, recompute at stride 2; the registered op passes None). ``out`` (optional) is a
    preallocated output of any strides; by default the output is channels_last when ``x`` is, contiguous
    otherwise. ``block_*`` (powers of two >= 16), ``tile_h``/``tile_w`` (halo; powers of two, product >= 16),
    ``num_programs`` (halo: programs of the persistent grid, one scratch slot each), ``scratch_dtype``
    (halo: float32, or x's dtype to halve the scratch), ``num_warps`` and ``num_stages`` override the
    heuristics of :func:`launch_config` (for benchmarks and tests).
    """
    w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce = weights
    if w_expand is None:  # no expand conv: only the "recompute" kernel (there is nothing to expand once)
        if variant == "halo":
            raise ValueError("the 'halo' variant needs an expand conv; a block without one runs 'recompute'")
        variant = "recompute"
    variant = choose_variant(stride, variant)
    B, C_in, H, W = x.shape
    E = w_dw.shape[0]
    C_out = w_reduce.shape[0]
    H_out, W_out = (H + stride - 1) // stride, (W + stride - 1) // stride
    shape = (B, C_out, H_out, W_out)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))
    elif tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out must be a {x.dtype} tensor of shape {shape} on {x.device}, got {out.dtype} "
            f"{tuple(out.shape)} on {out.device}"
        )
    cfg = launch_config(
        x.dtype, C_in, E, C_out, variant=variant, expand=w_expand is not None, block_p=block_p, block_k=block_k, block_e=block_e,
        block_co=block_co, tile_h=tile_h, tile_w=tile_w, block_hp=block_hp, num_warps=num_warps,
        num_stages=num_stages,
    )  # fmt: skip
    if out.numel() == 0:
        return out
    if max(_max_offset(x), _max_offset(out)) >= 2**31:
        raise ValueError("inverted_residual (triton): one image of x or out spans 2**31 elements or more")
    # The two 1x1 weights feed the dots: in x's dtype, contiguous (a no-op when they already are; otherwise
    # a copy of E x C elements, nothing next to the activations). Their unit inner stride lets the loads
    # vectorize, which keeps the weight tiles' pointers out of the register budget.
    w_expand = None if w_expand is None else w_expand.to(x.dtype).contiguous()
    w_reduce = w_reduce.to(x.dtype).contiguous()
    w_dw = w_dw.reshape(E, 9)  # a view for (E, 1, 3, 3) weights of the usual strides
    tensors = (x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out)
    if variant == "recompute":
        args, meta, grid = kernel_arguments(*tensors, stride, dilation, residual, cfg)
        _inverted_residual_fwd_kernel[grid](*args, **meta)
        return out
    num_work = halo_num_work(B, H_out, W_out, C_out, cfg)
    num_programs = min(num_programs or default_num_programs(x.device, num_work), num_work)
    scratch = torch.empty(
        (num_programs, cfg["block_e"], halo_geometry(cfg, stride, dilation)["halo_pad"]),
        dtype=scratch_dtype, device=x.device,
    )  # fmt: skip
    args, meta, grid = halo_kernel_arguments(*tensors, scratch, stride, dilation, residual, cfg)
    _inverted_residual_halo_fwd_kernel[grid](*args, **meta)
    return out
