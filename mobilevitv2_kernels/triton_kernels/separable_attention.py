"""Launchers of the separable-attention core's Triton kernels (:mod:`.separable_attention_kernels`,
re-exported here): for every (b, p) of qkv (B, 1+2d, P, N), ``out = relu(v) * sum_N k * softmax_N(q)`` and
its gradient, the caller's dtype in and out; tile sizes, warps and the backward's split chosen here. Design
notes: docs/design.md, "Separable attention (Triton)"."""

from __future__ import annotations

import torch
import triton

from mobilevitv2_kernels.triton_kernels.launch import on_tensor_device
from mobilevitv2_kernels.triton_kernels.separable_attention_kernels import (
    _separable_attention_bwd_dq_kernel,
    _separable_attention_bwd_kernel,
    _separable_attention_fwd_kernel,
)

# Elements of one (BLOCK_D, BLOCK_N) register tile; the launchers size blocks to about this many.
_TILE = 2048
# Largest N handled in one block (one pass, everything read once); larger N loops over blocks.
_MAX_SINGLE_BLOCK_N = 1024


def _check_out(out: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device or not out.is_contiguous():
        raise ValueError(
            f"out must be a contiguous {like.dtype} tensor of shape {shape} on {like.device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device} (contiguous={out.is_contiguous()})"
        )
    return out


def _blocks(D: int, N: int, block_d: int | None, block_n: int | None) -> tuple[int, int]:
    """Tile sizes: BLOCK_N covers N when N is at most _MAX_SINGLE_BLOCK_N, BLOCK_D fills about _TILE."""
    if block_n is None:
        block_n = min(triton.next_power_of_2(N), _MAX_SINGLE_BLOCK_N)
    if block_d is None:
        block_d = max(1, min(triton.next_power_of_2(D), _TILE // block_n))
    for name, value in (("block_d", block_d), ("block_n", block_n)):
        if value < 1 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two, got {value}")
    return block_d, block_n


def _num_warps(block_d: int, block_n: int) -> int:
    return 8 if block_d * block_n >= 8192 else 4


def _target_programs(device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over (a small number under the interpreter)."""
    if device.type != "cuda":
        return 8
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


@on_tensor_device
def separable_attention_forward(
    qkv: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    block_d: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """ReLU(value) * sum_N(key * softmax_N(query)) for qkv (B, 1+2d, P, N) -> (B, d, P, N) contiguous.

    ``out`` (optional) is a preallocated contiguous output; ``block_d``, ``block_n`` (powers of two) and
    ``num_warps`` override the tile heuristics (for benchmarks and tests).
    """
    B, C, P, N = qkv.shape
    D = (C - 1) // 2
    out = _check_out(out, qkv, (B, D, P, N))
    if out.numel() == 0:
        return out
    block_d, block_n = _blocks(D, N, block_d, block_n)
    num_d_blocks = triton.cdiv(D, block_d)
    _separable_attention_fwd_kernel[(B * P * num_d_blocks,)](
        qkv,
        out,
        *qkv.stride(),
        P,
        N,
        D,
        num_d_blocks,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        SINGLE_N=N <= block_n,
        num_warps=num_warps or _num_warps(block_d, block_n),
    )
    return out


@on_tensor_device
def separable_attention_backward(
    grad_out: torch.Tensor,
    qkv: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    block_d: int | None = None,
    block_n: int | None = None,
    split: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Gradient of :func:`separable_attention_forward` w.r.t. qkv: (B, 1+2d, P, N) contiguous, qkv's dtype.

    ``grad_out`` (B, d, P, N) may have any strides and dtype. ``out`` is an optional preallocated result;
    ``block_d``, ``block_n``, ``split`` (programs per (b, p) when N fits one block) and ``num_warps``
    override the heuristics.
    """
    B, C, P, N = qkv.shape
    D = (C - 1) // 2
    out = _check_out(out, qkv, (B, C, P, N))
    if out.numel() == 0:
        return out
    if D == 0:
        return out.zero_()
    block_d, block_n = _blocks(D, N, block_d, block_n)
    num_d_blocks = triton.cdiv(D, block_d)
    single_n = N <= block_n
    if not single_n:
        split = num_d_blocks  # one d-block per program, so c and dc stay in registers across the N loops
    elif split is None:
        split = min(num_d_blocks, max(1, triton.cdiv(_target_programs(qkv.device), B * P)))
    split = max(1, min(int(split), num_d_blocks))
    fuse_dq = split == 1
    if fuse_dq:
        partial_ds = partial_sum = stats = out  # unused by the kernel; any pointer of the right device
    else:
        partial_ds = torch.empty((B * P, split, N), dtype=torch.float32, device=qkv.device)
        partial_sum = torch.empty((B * P, split), dtype=torch.float32, device=qkv.device)
        stats = torch.empty((B * P, 2), dtype=torch.float32, device=qkv.device)
    _separable_attention_bwd_kernel[(B * P, split)](
        grad_out,
        qkv,
        out,
        partial_ds,
        partial_sum,
        stats,
        *grad_out.stride(),
        *qkv.stride(),
        P,
        N,
        D,
        num_d_blocks,
        SPLIT=split,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        SINGLE_N=single_n,
        FUSE_DQ=fuse_dq,
        num_warps=num_warps or _num_warps(block_d, block_n),
    )
    if not fuse_dq:
        dq_block_n = min(triton.next_power_of_2(N), max(16, 4096 // triton.next_power_of_2(split)))
        _separable_attention_bwd_dq_kernel[(B * P, triton.cdiv(N, dq_block_n))](
            qkv,
            out,
            partial_ds,
            partial_sum,
            stats,
            qkv.stride(0),
            qkv.stride(2),
            qkv.stride(3),
            P,
            N,
            D,
            SPLIT=split,
            BLOCK_SPLIT=triton.next_power_of_2(split),
            BLOCK_N=dq_block_n,
            num_warps=4,
        )
    return out
