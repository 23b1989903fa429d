"""Triton kernel for the fused MobileNetV2 inverted residual (inference), and its launcher.

Computes, with BatchNorm folded into the weights (:mod:`mobilevitv2_kernels.folding`):
    h = SiLU(x @ w_expand^T + b_expand)                   expand 1x1, C_in -> E
    h = SiLU(depthwise3x3(h, w_dw, stride, dilation) + b_dw)
    y = h @ w_reduce^T + b_reduce (+ x)                   reduce 1x1, E -> C_out

so that the E-channel expanded activation, the largest tensor of the network, never reaches memory.

Work split: one program per (tile of BLOCK_P output pixels, block of BLOCK_CO output channels); pixels are
the flattened (b, oh, ow) of the output, output-channel blocks adjacent in launch order so that programs
sharing a pixel tile (and so its input pixels) run together. Every tile is (channels, pixels), pixels last
and spread over a warp's threads: NCHW loads and stores coalesce along image rows, and per-pixel index
vectors cost a register or two per thread. Each program loops over E in BLOCK_E chunks:

    for each chunk of E:
        dw = 0                                               (BLOCK_E, BLOCK_P) fp32
        for each of the 9 taps (a loop; unrolled, nine taps' pointers would stay live at once):
            x_tap = x at the tap's shifted input positions   (BLOCK_K, BLOCK_P) per C_in chunk, 0 outside
            h = SiLU(w_expand_chunk @ x_tap + b_expand)       tl.dot, fp32 accumulation
            h = 0 where the tap is outside the image          (padding applies to the *expanded* map)
            dw += h * w_dw[:, tap]
        acc += w_reduce_chunk @ SiLU(dw + b_dw)              tl.dot into (BLOCK_CO, BLOCK_P) fp32
    out = acc + b_reduce (+ x), stored in x's dtype

Recompute: the expand 1x1 runs once per (output pixel, tap), i.e. 9 times per output pixel instead of once
per input pixel: 9x the expand FLOPs of the unfused block at stride 1 and 9/4 = 2.25x at stride 2, times the
number of output-channel blocks (1 whenever C_out <= BLOCK_CO: up to 256 channels by default, 128 for
float32). The depthwise conv and the reduce 1x1 run once. From DRAM, x is read once (the nine shifted
reads of a tile hit L1/L2) and y written once; the E-channel activations never leave the chip. Whether the
extra expand FLOPs cost less than the two E-channel round trips they save is what
``bench/gpu_check_kernels.py`` measures. (A halo-tile variant, expanding each input pixel of a 2-D tile
plus its border once, 1.3-1.6x recompute, needs shifted reads of an on-chip tile, which Triton does not
expose; it would go through a scratch buffer or CUDA.)

Registers, from ptxas for sm_90 with the JIT's specialisation of the width-1.0 shapes (checked by
tests/test_fused_inverted_residual.py::test_kernel_compiles_for_sm90): at the defaults BLOCK_P=64,
BLOCK_K<=64, BLOCK_E<=64, 8 warps, fp16 uses 125-191 registers per thread with BLOCK_CO<=128 and 232-248
with BLOCK_CO=256, no spills; float32 (IEEE dots) 191 at BLOCK_CO=128 but spills at 256, hence its cap. The accumulator (BLOCK_CO x BLOCK_P fp32) lives through the whole E loop, dw through the tap loop;
the w_reduce tile (BLOCK_CO x BLOCK_E) is the largest transient. Weight tiles are loaded in x's dtype with
unit inner stride (the launcher makes them so; float32 weight tiles feeding an fp16 dot spill). 4 warps
at these tiles spill too; BLOCK_E=32 with 4 warps fits (231). The tile sweep of the GPU script picks among
such configurations.

Dot precision: float16/bfloat16 inputs use the tensor cores natively (wgmma on sm_90); a float32 input uses
IEEE fp32 dots (no TF32), so float32 results match the eager model to 1e-5. All tile sizes are >= 16
(``tl.dot``'s minimum); masks pad channel counts that are not multiples of the tiles. x and out are
addressed through their strides: NCHW, channels_last and sliced inputs are read in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilevitv2_kernels.backends import triton_interpreter_enabled
from mobilevitv2_kernels.inverted_residual import output_memory_format


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
    dot_dtype = tl.float32 if DOT_FP32 else x_ptr.dtype.element_ty

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) flattened (b, oh, ow)
    mask_p = offs_p < NUM_PIXELS
    hw_out = H_OUT * W_OUT
    b = offs_p // hw_out
    oh = (offs_p % hw_out) // W_OUT
    ow = offs_p % W_OUT
    x_batch = x_ptr + b.to(tl.int64) * stride_x_b  # (BLOCK_P,) pointers to x[b, 0, 0, 0]

    offs_k0 = tl.arange(0, BLOCK_K)
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
        b_exp = tl.load(b_expand_ptr + offs_e * stride_be, mask=mask_e, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK_E, BLOCK_P), dtype=tl.float32)
        for t in range(9):  # a loop, not unrolled: nine copies of the tap's pointers would all stay live
            ih = oh * STRIDE + (t // 3 - 1) * DILATION
            iw = ow * STRIDE + (t % 3 - 1) * DILATION
            inside = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # (BLOCK_P,)
            x_tap = x_batch + (ih * stride_x_h + iw * stride_x_w)  # (BLOCK_P,) pointers; int32 offsets
            h = tl.zeros((BLOCK_E, BLOCK_P), dtype=tl.float32)
            for k0 in range(0, C_IN, BLOCK_K):
                offs_k = k0 + offs_k0
                mask_k = offs_k < C_IN
                wt = tl.load(
                    w_expand_ptr + offs_e[:, None] * stride_we_e + offs_k[None, :] * stride_we_k,
                    mask=mask_e[:, None] & mask_k[None, :],
                    other=0.0,
                ).to(dot_dtype)  # (BLOCK_E, BLOCK_K)
                xt = tl.load(
                    x_tap[None, :] + offs_k[:, None] * stride_x_c,
                    mask=mask_k[:, None] & inside[None, :],
                    other=0.0,
                ).to(dot_dtype)  # (BLOCK_K, BLOCK_P)
                h = tl.dot(wt, xt, h, input_precision=DOT_PRECISION)
            h = h + b_exp[:, None]
            h = h * tl.sigmoid(h)
            h = tl.where(inside[None, :], h, 0.0)  # zero padding of the expanded map, not SiLU(b_expand)
            w_tap = tl.load(w_dw_ptr + offs_e * stride_wd_e + t * stride_wd_t, mask=mask_e, other=0.0)
            dw += h * w_tap.to(tl.float32)[:, None]
        b_d = tl.load(b_dw_ptr + offs_e * stride_bd, mask=mask_e, other=0.0).to(tl.float32)
        dw = dw + b_d[:, None]
        dw = dw * tl.sigmoid(dw)  # padded channels (e >= E) are SiLU(0) = 0 and meet zero w_reduce columns
        wr = tl.load(
            w_reduce_ptr + offs_co[:, None] * stride_wr_c + offs_e[None, :] * stride_wr_e,
            mask=mask_co[:, None] & mask_e[None, :],
            other=0.0,
        ).to(dot_dtype)  # (BLOCK_CO, BLOCK_E)
        acc = tl.dot(wr, dw.to(dot_dtype), acc, input_precision=DOT_PRECISION)

    acc += tl.load(b_reduce_ptr + offs_co * stride_br, mask=mask_co, other=0.0).to(tl.float32)[:, None]
    mask = mask_co[:, None] & mask_p[None, :]
    if RESIDUAL:
        x_center = x_batch + (oh * stride_x_h + ow * stride_x_w)
        acc += tl.load(x_center[None, :] + offs_co[:, None] * stride_x_c, mask=mask, other=0.0).to(tl.float32)
    out_pix = out_ptr + b.to(tl.int64) * stride_o_b + (oh * stride_o_h + ow * stride_o_w)  # (BLOCK_P,) pointers
    out_ptrs = out_pix[None, :] + offs_co[:, None] * stride_o_c
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------------------


def _block(n: int, cap: int) -> int:
    """A power-of-two tile >= 16 (tl.dot's minimum) covering ``n`` up to ``cap``."""
    return max(16, min(triton.next_power_of_2(max(n, 1)), cap))


def _check_tile(name: str, value: int) -> int:
    if value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's minimum), got {value}")
    return value


def launch_config(
    dtype: torch.dtype,
    c_in: int,
    e: int,
    c_out: int,
    *,
    block_p: int | None = None,
    block_k: int | None = None,
    block_e: int | None = None,
    block_co: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> dict[str, int]:
    """The tiles, warps and pipeline stages the launcher uses for these channel counts (any given value
    overrides the heuristic). Exposed so that the sm_90 compile test checks exactly these configurations."""
    block_p = _check_tile("block_p", block_p or 64)
    block_k = _check_tile("block_k", block_k or _block(c_in, 64))
    block_e = _check_tile("block_e", block_e or _block(e, 64))
    # Up to 256 output channels in one program (so the expand work is not repeated per channel block), but
    # 128 for float32, whose IEEE dots need more registers (256 spills there; see the module docstring).
    wide = c_out > 128 and dtype != torch.float32
    block_co = _check_tile("block_co", block_co or _block(c_out, 256 if wide else 128))
    if num_warps is None:
        num_warps = 8 if max(block_co, block_e) * block_p >= 4096 else 4
    return dict(
        block_p=block_p,
        block_k=block_k,
        block_e=block_e,
        block_co=block_co,
        num_warps=num_warps,
        num_stages=num_stages or 2,
    )


def _max_offset(t: torch.Tensor) -> int:
    """Largest element offset inside one image of a (B, C, H, W) tensor (the kernel's int32 part)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:]))


def kernel_arguments(x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out, stride, dilation, residual, cfg):
    """(positional arguments, constexprs and launch options, grid) of one kernel launch, for tensors already
    prepared by :func:`inverted_residual_forward` (1x1 weights in x's dtype, w_dw as (E, 9)). Separate so
    that the sm_90 compile test specialises the kernel exactly as the JIT does for real arguments."""
    B, C_in, H, W = x.shape
    E, C_out = w_expand.shape[0], w_reduce.shape[0]
    H_out, W_out = out.shape[2], out.shape[3]
    num_co_blocks = triton.cdiv(C_out, cfg["block_co"])
    num_pixels = B * H_out * W_out
    grid = (triton.cdiv(num_pixels, cfg["block_p"]) * num_co_blocks,)
    args = (
        x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out,
        *x.stride(), *w_expand.stride(), b_expand.stride(0), *w_dw.stride(), b_dw.stride(0),
        *w_reduce.stride(), b_reduce.stride(0), *out.stride(),
        C_in, E, C_out, H, W, H_out, W_out, num_pixels, num_co_blocks,
    )  # fmt: skip
    # Triton 3.8's interpreter multiplies bfloat16 dot operands as their raw uint16 bit patterns. Under the
    # interpreter, bfloat16 operands are therefore widened to float32 (exact), which gives the same result as
    # a bfloat16 tensor-core dot with float32 accumulation; compiled kernels use the bfloat16 dot.
    dot_fp32 = x.dtype == torch.bfloat16 and triton_interpreter_enabled()
    meta = dict(
        STRIDE=stride,
        DILATION=dilation,
        RESIDUAL=bool(residual),
        BLOCK_P=cfg["block_p"],
        BLOCK_K=cfg["block_k"],
        BLOCK_E=cfg["block_e"],
        BLOCK_CO=cfg["block_co"],
        DOT_PRECISION="ieee" if x.dtype == torch.float32 or dot_fp32 else "tf32",
        DOT_FP32=dot_fp32,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return args, meta, grid


def inverted_residual_forward(
    x: torch.Tensor,
    w_expand: torch.Tensor,
    b_expand: torch.Tensor,
    w_dw: torch.Tensor,
    b_dw: torch.Tensor,
    w_reduce: torch.Tensor,
    b_reduce: torch.Tensor,
    stride: int,
    dilation: int,
    residual: bool,
    *,
    out: torch.Tensor | None = None,
    block_p: int | None = None,
    block_k: int | None = None,
    block_e: int | None = None,
    block_co: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> torch.Tensor:
    """The fused block for x (B, C_in, H, W) -> (B, C_out, ceil(H/stride), ceil(W/stride)), x's dtype.

    Arguments as in :func:`mobilevitv2_kernels.reference.inverted_residual_forward` (already validated by
    the op). ``out`` (optional) is a preallocated output of any strides; by default the output is
    channels_last when ``x`` is, contiguous otherwise. ``block_*`` (powers of two >= 16), ``num_warps`` and
    ``num_stages`` override the heuristics of :func:`launch_config` (for benchmarks and tests).
    """
    B, C_in, H, W = x.shape
    E = w_expand.shape[0]
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
        x.dtype, C_in, E, C_out, block_p=block_p, block_k=block_k, block_e=block_e, block_co=block_co,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    if out.numel() == 0:
        return out
    if max(_max_offset(x), _max_offset(out)) >= 2**31:
        raise ValueError("inverted_residual (triton): one image of x or out spans 2**31 elements or more")
    # The two 1x1 weights feed the dots: in x's dtype, contiguous (a no-op when they already are; otherwise
    # a copy of E x C elements, nothing next to the activations). Their unit inner stride lets the loads
    # vectorize, which keeps the weight tiles' pointers out of the register budget.
    w_expand = w_expand.to(x.dtype).contiguous()
    w_reduce = w_reduce.to(x.dtype).contiguous()
    w_dw = w_dw.reshape(E, 9)  # a view for (E, 1, 3, 3) weights of the usual strides
    args, meta, grid = kernel_arguments(x, w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce, out, stride,
                                        dilation, residual, cfg)  # fmt: skip
    _inverted_residual_fwd_kernel[grid](*args, **meta)
    return out
