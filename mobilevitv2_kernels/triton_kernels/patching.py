"""Triton kernels for unfold (B, C, H, W) -> (B, C, P, N) and fold (its adjoint), and their launchers.

Ordering (transformers' MobileViTV2, see :mod:`mobilevitv2_kernels.reference`): pixel (hi*ph + i, wi*pw + j)
of the map is patch element p = i*pw + j of patch n = hi*nw + wi, with nh = H // ph, nw = W // pw. Unfold
drops rows/columns beyond nh*ph, nw*pw; fold writes zeros there.

Both kernels walk their contiguous *output* in (BLOCK_R, BLOCK_M) tiles: BLOCK_R rows of the flattened
(B*C) axis by BLOCK_M elements of a row (P*N for unfold, H*W for fold), and gather the input through its
strides. Index arithmetic is done on the 1-D row and column vectors, not per element; the patch sizes are
compile-time constants, so divisions by them are shifts or multiplies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mobilevitv2_kernels.triton_kernels.launch import on_tensor_device

_TILE = 4096  # elements per (BLOCK_R, BLOCK_M) tile
_MAX_BLOCK_M = 1024


@triton.jit
def _unfold_kernel(
    x_ptr,  # (B, C, H, W), any strides
    out_ptr,  # (B, C, PH*PW, NH*NW), contiguous
    stride_x_b,  # x.stride(0)
    stride_x_c,  # x.stride(1)
    stride_x_h,  # x.stride(2)
    stride_x_w,  # x.stride(3)
    C,  # channels
    ROWS,  # B * C
    NW,  # patches per grid row (W // PW)
    ROW_LEN,  # PH * PW * NH * NW, elements of one output row
    PH: tl.constexpr,  # patch height
    PW: tl.constexpr,  # patch width
    BLOCK_R: tl.constexpr,  # (b, c) rows per program
    BLOCK_M: tl.constexpr,  # output elements of a row per program
):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,) flattened b*C + c
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) flattened p*N + n
    mask_r = offs_r < ROWS
    mask_m = offs_m < ROW_LEN
    num_patches = ROW_LEN // (PH * PW)
    p = offs_m // num_patches
    n = offs_m % num_patches
    row = (n // NW) * PH + p // PW  # hi*PH + i
    col = (n % NW) * PW + p % PW  # wi*PW + j
    r64 = offs_r.to(tl.int64)
    src_r = (r64 // C) * stride_x_b + (r64 % C) * stride_x_c  # (BLOCK_R,)
    src_m = row.to(tl.int64) * stride_x_h + col.to(tl.int64) * stride_x_w  # (BLOCK_M,)
    mask = mask_r[:, None] & mask_m[None, :]
    x = tl.load(x_ptr + src_r[:, None] + src_m[None, :], mask=mask)
    tl.store(out_ptr + r64[:, None] * ROW_LEN + offs_m[None, :], x, mask=mask)


@triton.jit
def _fold_kernel(
    patches_ptr,  # (B, C, PH*PW, NH*NW), any strides
    out_ptr,  # (B, C, H, W), contiguous
    stride_in_b,  # patches.stride(0)
    stride_in_c,  # patches.stride(1)
    stride_in_p,  # patches.stride(2)
    stride_in_n,  # patches.stride(3)
    C,  # channels
    ROWS,  # B * C
    W,  # output width
    NH,  # patch-grid rows (H // PH)
    NW,  # patch-grid columns (W // PW)
    ROW_LEN,  # H * W, elements of one output row
    PH: tl.constexpr,  # patch height
    PW: tl.constexpr,  # patch width
    BLOCK_R: tl.constexpr,  # (b, c) rows per program
    BLOCK_M: tl.constexpr,  # output pixels of a row per program
):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,) flattened b*C + c
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) flattened h*W + w
    mask_r = offs_r < ROWS
    mask_m = offs_m < ROW_LEN
    h = offs_m // W
    w = offs_m % W
    hi = h // PH
    wi = w // PW
    inside = (hi < NH) & (wi < NW)  # False where unfold dropped the pixel: write 0
    p = (h % PH) * PW + w % PW
    n = hi * NW + wi
    r64 = offs_r.to(tl.int64)
    src_r = (r64 // C) * stride_in_b + (r64 % C) * stride_in_c  # (BLOCK_R,)
    src_m = p.to(tl.int64) * stride_in_p + n.to(tl.int64) * stride_in_n  # (BLOCK_M,)
    mask = mask_r[:, None] & mask_m[None, :]
    x = tl.load(patches_ptr + src_r[:, None] + src_m[None, :], mask=mask & inside[None, :], other=0.0)
    tl.store(out_ptr + r64[:, None] * ROW_LEN + offs_m[None, :], x, mask=mask)


def _tiles(rows: int, row_len: int) -> tuple[int, int]:
    block_m = min(triton.next_power_of_2(row_len), _MAX_BLOCK_M)
    block_r = max(1, min(triton.next_power_of_2(rows), _TILE // block_m))
    return block_r, block_m


def _check_out(out: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {like.dtype} tensor of shape {shape} on {like.device}")
    return out


@on_tensor_device
def unfold_forward(x: torch.Tensor, patch_h: int, patch_w: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ph*pw, (H//ph)*(W//pw)) contiguous, transformers' patch ordering."""
    B, C, H, W = x.shape
    nh, nw = H // patch_h, W // patch_w
    out = _check_out(out, x, (B, C, patch_h * patch_w, nh * nw))
    if out.numel() == 0:
        return out
    rows, row_len = B * C, patch_h * patch_w * nh * nw
    block_r, block_m = _tiles(rows, row_len)
    _unfold_kernel[(triton.cdiv(rows, block_r), triton.cdiv(row_len, block_m))](
        x,
        out,
        *x.stride(),
        C,
        rows,
        nw,
        row_len,
        PH=patch_h,
        PW=patch_w,
        BLOCK_R=block_r,
        BLOCK_M=block_m,
        num_warps=4,
    )
    return out


@on_tensor_device
def fold_forward(
    patches: torch.Tensor,
    height: int,
    width: int,
    patch_h: int,
    patch_w: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, C, ph*pw, N) -> (B, C, height, width) contiguous; zeros where unfold dropped pixels."""
    B, C = patches.shape[:2]
    out = _check_out(out, patches, (B, C, height, width))
    if out.numel() == 0:
        return out
    rows, row_len = B * C, height * width
    block_r, block_m = _tiles(rows, row_len)
    _fold_kernel[(triton.cdiv(rows, block_r), triton.cdiv(row_len, block_m))](
        patches,
        out,
        *patches.stride(),
        C,
        rows,
        width,
        height // patch_h,
        width // patch_w,
        row_len,
        PH=patch_h,
        PW=patch_w,
        BLOCK_R=block_r,
        BLOCK_M=block_m,
        num_warps=4,
    )
    return out
