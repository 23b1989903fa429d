"""What several modules of the package need, in one leaf module (it imports nothing of the package): the
errors, the accepted dtypes, whether the Triton interpreter is on, and the output layout rule of the convs."""

from __future__ import annotations

import os

import torch

# What the ops accept; the fused backends take the first three (float64 only on the reference backend).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class BackendUnavailableError(RuntimeError):
    """Raised when an explicitly requested backend cannot run here; the message says why."""


class KernelCheckError(BackendUnavailableError):
    """Raised when an explicitly requested backend failed its first-use check against the reference
    (:mod:`mobilevitv2_kernels.self_check`) for the op, device and dtype at hand."""


def triton_interpreter_enabled() -> bool:
    """True when Triton kernels run on CPU tensors through ``TRITON_INTERPRET=1`` (read when a backend is
    chosen or a launch is configured, never inside a kernel)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The output follows the input's layout, as ``F.conv2d`` does: channels_last for a channels_last input
    (that is not also plain contiguous), contiguous NCHW otherwise."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
