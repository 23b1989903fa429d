"""Launcher of the fused inverted-residual Triton kernels (:mod:`.inverted_residual_kernels`, re-exported
here): the variant rule, the launch configuration (tiles, warps, halo geometry) and each launch's arguments,
the latter exposed so that the sm_90 compile test specialises the kernels exactly as a launch does. Design
notes: docs/design.md, "Inverted residual (Triton)"."""

from __future__ import annotations

import torch
import triton

from mobilevitv2_kernels.common import output_memory_format, triton_interpreter_enabled
from mobilevitv2_kernels.triton_kernels.inverted_residual_kernels import (
    _inverted_residual_fwd_kernel,
    _inverted_residual_halo_fwd_kernel,
)
from mobilevitv2_kernels.triton_kernels.launch import on_tensor_device
from mobilevitv2_kernels.weights import InvertedResidualWeights

VARIANTS = ("recompute", "halo")


def choose_variant(stride: int, variant: str | None = None) -> str:
    """The kernel variant for a launch: ``variant`` when given, else the automatic rule.

    The automatic rule: "halo" at stride 1 (it executes ~1.4-1.9x the unfused expand FLOPs where
    "recompute" executes 9x), "recompute" at stride 2 (2.25x there, and no scratch buffer). Measured by
    ``bench/gpu_check_kernels.py`` on an H200 (fp16, batch 256, five of the six width-1.0 block shapes,
    commit f37c05c): the rule picks the faster variant at all five, halo 1.04x and 1.65x at stride 1,
    recompute 1.5-1.7x at stride 2.
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
    # 128 for float32, whose IEEE dots need more registers (256 spills there; docs/design.md), and
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
        # tiles spill on sm_90 (docs/design.md).
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
    the op). ``variant``: "recompute", "halo" or None (the rule of :func:`choose_variant`: halo
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
