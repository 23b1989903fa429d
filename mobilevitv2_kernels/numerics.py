"""The numerics rules every kernel is held to, in one place: tests, benchmarks and the first-use check of
each fused backend (:mod:`mobilevitv2_kernels.self_check`) use these.

A result in ``dtype`` is compared with a float64 reference computed from the same (already rounded) inputs:

    max|err| <= atol + rtol * max|expected| + factor * max|error of PyTorch computing it in that dtype|

float32 must match to about 1e-5; float16/bfloat16 may be off by at most twice PyTorch's own error in that
dtype (flash-attention's convention), plus one unit in the last place of the largest value (rounding an
exact float32 result once may lose half of one where PyTorch got lucky on a few elements).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=1e-5, factor=0.0),
    torch.float16: dict(atol=1e-5, rtol=2.0**-10, factor=2.0),
    torch.bfloat16: dict(atol=1e-4, rtol=2.0**-7, factor=2.0),
}


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in float64 (on the CPU); inf where ``actual`` is not finite (an element a
    kernel never wrote stays NaN when the output was NaN-filled)."""
    if actual.numel() == 0:
        return 0.0
    actual = actual.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return float("inf")
    return (actual - expected.detach().double().cpu()).abs().max().item()


def error_bound(expected: torch.Tensor, dtype: torch.dtype, torch_lowp: torch.Tensor | None = None) -> float:
    """The largest max-abs error allowed against the float64 ``expected`` for a result in ``dtype``;
    ``torch_lowp`` is PyTorch's own result in that dtype (needed for float16/bfloat16)."""
    tol = TOLERANCES[dtype]
    bound = tol["atol"] + tol["rtol"] * expected.detach().abs().max().item()
    if tol["factor"]:
        if torch_lowp is None:
            raise ValueError(f"error_bound for {dtype} needs PyTorch's own {dtype} result (torch_lowp)")
        bound += tol["factor"] * max_abs_error(torch_lowp, expected)
    return bound


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Turn TF32 off for cuDNN convolutions and cuBLAS matmuls while an float32 oracle is computed (TF32
    keeps a 10-bit mantissa, like float16: an "fp32 reference" computed with it is no better than the
    thing it is meant to judge). Restores the previous settings on exit."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
