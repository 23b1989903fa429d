"""Shared by the fused-op tests: the dtypes and error bounds of the numerics rules, and the device fixture's
skip logic (the Triton backend runs on CPU tensors only under the interpreter, on CUDA for real)."""

from __future__ import annotations

import pytest
import torch

from mobilevitv2_kernels import backends

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# max|err| <= atol + rtol * max|expected| + factor * max|error of PyTorch computing it in that dtype|
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=1e-5, factor=0.0),
    torch.float16: dict(atol=1e-5, rtol=2.0**-10, factor=2.0),
    torch.bfloat16: dict(atol=1e-4, rtol=2.0**-7, factor=2.0),
}


def error_bound(expected: torch.Tensor, dtype: torch.dtype, torch_lowp: torch.Tensor | None = None) -> float:
    """The largest max-abs error allowed against the float64 ``expected`` for a result in ``dtype``;
    ``torch_lowp`` is PyTorch's own result in that dtype (needed for float16/bfloat16)."""
    tol = TOLERANCES[dtype]
    bound = tol["atol"] + tol["rtol"] * expected.abs().max().item()
    if dtype != torch.float32:
        bound += tol["factor"] * (torch_lowp.double() - expected).abs().max().item()
    return bound


def triton_device(request, op: str) -> str:
    """For a fixture parametrised over "cpu" and "cuda": the device, or a skip saying why Triton cannot run
    ``op`` there."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = backends.unavailable_reason("triton", request.param, op)
    if reason is not None:
        pytest.skip(reason)
    return request.param
