"""Every Triton launch runs with the tensors' device current (Triton launches on the current CUDA device,
and custom ops set no guard). On the CPU the interpreter needs no guard, so the test installs a recording
one for "cpu" and checks that every kernel launch happens inside it, for the tensors' device."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mobilevitv2_kernels import backends, self_check
from mobilevitv2_kernels.numerics import KERNEL_DTYPES


def _kernels(module) -> set[str]:
    """The names of every Triton kernel (launchable @triton.jit function ending in _kernel) of the backend."""
    import importlib
    import pkgutil

    import triton

    names = set()
    for info in pkgutil.iter_modules(module.__path__):
        sub = importlib.import_module(f"{module.__name__}.{info.name}")
        for name, value in vars(sub).items():
            if name.endswith("_kernel") and isinstance(value, triton.runtime.KernelInterface):
                names.add(name)
    return names


def test_every_triton_launch_is_inside_a_device_guard(monkeypatch, triton_module):
    from triton.runtime.interpreter import InterpretedFunction

    from mobilevitv2_kernels.triton_kernels import launch

    guarded = []

    @contextlib.contextmanager
    def recording_guard(device):
        guarded.append(device)
        try:
            yield
        finally:
            guarded.pop()

    launches = []
    real_run = InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        launches.append((self.__name__, list(guarded), {t.device for t in tensors}))
        return real_run(self, *args, **kwargs)

    monkeypatch.setitem(launch.DEVICE_GUARDS, "cpu", recording_guard)
    monkeypatch.setattr(InterpretedFunction, "run", recording_run)

    # Every op's check case, in every dtype, and the backward's second kernel (taken when the d-blocks of a
    # (b, p) are split over programs).
    for op in self_check.CASES:
        for dtype in KERNEL_DTYPES:
            assert self_check.check("triton", triton_module, op, torch.device("cpu"), dtype).ok
    qkv, grad = torch.randn(1, 1 + 2 * 32, 2, 8), torch.randn(1, 32, 2, 8)
    triton_module.separable_attention_backward(grad, qkv, block_d=8, split=2)

    assert {name for name, _, _ in launches} == _kernels(triton_module), "a kernel was never launched"
    unguarded = sorted({name for name, guards, _ in launches if not guards})
    assert not unguarded, f"launched without a device guard: {unguarded}"
    wrong = sorted({name for name, guards, devices in launches if devices - {guards[-1]}})
    assert not wrong, f"the guard's device is not the tensors': {wrong}"


def test_guard_is_a_no_op_without_one(triton_module):
    from mobilevitv2_kernels.triton_kernels import launch

    assert "cpu" not in launch.DEVICE_GUARDS
    with launch.device_guard(torch.device("cpu")):
        pass


@pytest.mark.gpu
def test_kernels_run_on_the_tensors_gpu_not_the_current_one():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    from mobilevitv2_kernels import reference

    triton_module = backends.implementation("triton")
    qkv = torch.randn(2, 17, 4, 64, device="cuda:1")
    with torch.cuda.device(0):
        out = triton_module.separable_attention_forward(qkv)
        torch.cuda.synchronize(1)
    assert out.device == qkv.device
    torch.testing.assert_close(out, reference.separable_attention_forward(qkv), atol=1e-5, rtol=1e-5)
