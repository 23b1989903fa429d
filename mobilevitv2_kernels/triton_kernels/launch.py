"""Launch on the tensors' device.

Triton launches a kernel on the *current* CUDA device, not on the device of its tensor arguments, and
``torch.library.custom_op`` sets no device guard. Without one, tensors on ``cuda:1`` while the current device
is 0 would be read by a kernel running on GPU 0. Every launcher of this package is wrapped in
:func:`on_tensor_device`, which makes the first tensor argument's device current for the call.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch

# device type -> context manager that makes a device of that type current. CPU tensors (the Triton
# interpreter) need none; the tests put a recording guard here to see that every launch is inside one.
DEVICE_GUARDS: dict[str, Callable[[torch.device], contextlib.AbstractContextManager]] = {"cuda": torch.cuda.device}

F = TypeVar("F", bound=Callable)


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """A context manager making ``device`` the current device of its type (a no-op where none is needed)."""
    guard = DEVICE_GUARDS.get(device.type)
    return guard(device) if guard is not None else contextlib.nullcontext()


def on_tensor_device(launcher: F) -> F:
    """Decorate a launcher whose first argument is a tensor: its kernels run on that tensor's device."""

    @functools.wraps(launcher)
    def run_on_device(first: torch.Tensor, *args, **kwargs):
        with device_guard(first.device):
            return launcher(first, *args, **kwargs)

    return run_on_device  # type: ignore[return-value]
