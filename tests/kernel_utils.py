"""Shared by the fused-op tests: the dtypes and error bounds of the numerics rules, and the device fixture's
skip logic (the Triton backend runs on CPU tensors only under the interpreter, on CUDA for real)."""

from __future__ import annotations

import pytest
import torch

from mobilevitv2_kernels import backends

# The numerics rules (tolerance table and bound) live in the package, shared with its first-use check.
from mobilevitv2_kernels.numerics import KERNEL_DTYPES, TOLERANCES, error_bound  # noqa: E402,F401

DTYPES = list(KERNEL_DTYPES)


def triton_device(request, op: str) -> str:
    """For a fixture parametrised over "cpu" and "cuda": the device, or a skip saying why Triton cannot run
    ``op`` there."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = backends.unavailable_reason("triton", request.param, op)
    if reason is not None:
        pytest.skip(reason)
    return request.param
