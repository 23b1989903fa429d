"""Shared test setup: without a GPU, Triton kernels run on CPU tensors through the Triton interpreter.

The variable must be set before anything imports ``triton``; conftest.py is imported before any test module.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


pytest_plugins = ["failure_log"]  # MOBILEVITV2_FAILURE_LOG: failures written as they happen


def _nan_filled(allocate):
    def allocate_nan(*args, **kwargs):
        tensor = allocate(*args, **kwargs)
        if tensor.is_floating_point() and tensor.numel():
            tensor.fill_(float("nan"))
        return tensor

    return allocate_nan


@pytest.fixture
def nan_allocations(monkeypatch):
    """Every floating-point tensor that ``torch.empty``, ``empty_like``, ``empty_strided`` and
    ``Tensor.new_empty`` return during the test starts as NaN: outputs, partial sums, statistics and scratch
    buffers that the library allocates, not only the outputs a test passes in. An element a kernel never
    writes, or reads before writing, then shows up as a non-finite result. The kernel test modules use it
    for every test (``pytestmark``)."""
    for name in ("empty", "empty_like", "empty_strided"):
        monkeypatch.setattr(torch, name, _nan_filled(getattr(torch, name)))
    monkeypatch.setattr(torch.Tensor, "new_empty", _nan_filled(torch.Tensor.new_empty))


@pytest.fixture
def triton_module():
    """The Triton backend's module, for tests that call its launchers on CPU tensors (the interpreter);
    a skip saying why where it cannot run there."""
    from mobilevitv2_kernels import backends

    reason = backends.unavailable_reason("triton", "cpu")
    if reason is not None:
        pytest.skip(reason)
    return backends.implementation("triton")
