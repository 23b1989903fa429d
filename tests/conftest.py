"""Shared test setup.

* Without a GPU, Triton kernels run on CPU tensors through the Triton interpreter. The variable must be set
  before anything imports ``triton``; conftest.py is imported before any test module.
* The kernel tests' numerics: the rules of :mod:`mobilevitv2_kernels.numerics` (the package's one tolerance
  table, shared with its first-use check) applied by one assert helper, the ``assert_close`` fixture.
* The implementations an op's tests run on, as fixtures parametrised per test module (its ``OP``, or a
  test's ``@pytest.mark.op(name)``): ``backend`` (every implementation of the op: the reference, Triton on
  each device, the CUDA kernels' code compiled for the CPU, the CUDA extension), ``op_backend`` (those the
  registered op dispatches to), ``triton_device`` (the devices Triton runs on) and ``dtype`` (the kernels'
  dtypes). CUDA cases carry the ``gpu`` mark; a backend that cannot run here skips with the reason.
* ``nan_allocations``, ``manual_seed`` and ``ieee_fp32``, which every kernel test module applies to all its tests.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The commands that run a model on the CPU change the process's malloc (mobilevitv2.cpu_memory); the suite
# runs them in its own process, whose allocator stays as it is (tests/test_cpu_memory.py sets it in children).
os.environ.setdefault("MOBILEVITV2_KEEP_FREED_MEMORY", "0")

from mobilevitv2_kernels import backends  # noqa: E402  (after TRITON_INTERPRET is settled)
from mobilevitv2_kernels.numerics import (  # noqa: E402
    KERNEL_DTYPES,
    TOLERANCES,
    error_bound,
    max_abs_error,
    strict_fp32,
)

import cuda_kernels  # noqa: E402

pytest_plugins = ["failure_log"]  # MOBILEVITV2_FAILURE_LOG: failures written as they happen


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "op(name): the op whose backends the test's backend fixtures run (default: the module's OP)"
    )


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Exports and compiled graphs go to a folder of this test session, never to the user's cache (a test
    that needs a folder of its own sets ``MOBILEVITV2_CACHE`` itself)."""
    saved = os.environ.get("MOBILEVITV2_CACHE")
    os.environ["MOBILEVITV2_CACHE"] = str(tmp_path_factory.mktemp("mobilevitv2-cache"))
    yield
    if saved is None:
        del os.environ["MOBILEVITV2_CACHE"]
    else:
        os.environ["MOBILEVITV2_CACHE"] = saved


# ----------------------------------------------------------------------------------------------------------
# Every allocation starts as NaN; seeded randomness
# ----------------------------------------------------------------------------------------------------------


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
def manual_seed():
    """The same random inputs in every run (the kernel test modules apply it to every test)."""
    torch.manual_seed(0)


@pytest.fixture
def ieee_fp32():
    """float32 convolutions and matmuls in IEEE float32, not TF32 (cuDNN's default on a GPU), so that a
    float32 result of the reference is held to the float32 rules (the kernel test modules apply it to every
    test; on the CPU it changes nothing)."""
    with strict_fp32():
        yield


# ----------------------------------------------------------------------------------------------------------
# The numerics rules and their one assert helper
# ----------------------------------------------------------------------------------------------------------


def _assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    torch_lowp: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = None,
    exact: bool = False,
    nontrivial: float | None = None,
    own_error_factor: float | None = None,
    what: str = "result",
) -> None:
    """``actual`` (a kernel's result) against the oracle ``expected``, under the numerics rules.

    * ``expected``: the reference computed in float64 from the very (already rounded) inputs the kernel saw;
      ``torch_lowp``: PyTorch's own result in ``dtype`` (default ``actual.dtype``), needed for float16 and
      bfloat16, whose bound is twice PyTorch's own error (:func:`mobilevitv2_kernels.numerics.error_bound`).
    * ``exact``: the op only moves elements (unfold, fold): ``expected`` is the reference in ``actual``'s
      dtype and must match bit for bit.
    * ``nontrivial``: the oracle's largest magnitude must exceed it (agreeing with a near-zero oracle proves
      nothing).
    * ``own_error_factor``: for an ill-conditioned input, every dtype (float32 too) is held to this multiple
      of PyTorch's own error on top of the table's atol and rtol.

    A non-finite element fails: outputs start as NaN, so one the kernel never wrote shows up here.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (an element the kernel never wrote stays NaN)"
    if exact:
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, expected {expected.dtype}"
        assert torch.equal(actual.cpu(), expected.cpu()), f"{what}: differs from the reference (must be exact)"
        return
    if actual.numel() == 0:
        return
    dtype = dtype or actual.dtype
    if nontrivial is not None:
        assert expected.abs().max() > nontrivial, f"{what}: vacuous comparison, the oracle is nearly zero"
    tol = TOLERANCES[dtype]
    if own_error_factor is not None:
        bound = tol["atol"] + tol["rtol"] * expected.abs().max().item()
        bound += own_error_factor * max_abs_error(torch_lowp, expected)
    else:
        bound = error_bound(expected, dtype, torch_lowp if tol["factor"] else None)
    err = max_abs_error(actual, expected)
    assert err <= bound, f"{what}: max abs error {err:.3g} > bound {bound:.3g} ({dtype})"


@pytest.fixture
def assert_close():
    """The kernel tests' one comparison with the oracle (see ``_assert_close``)."""
    return _assert_close


@pytest.fixture(params=KERNEL_DTYPES, ids=str)
def dtype(request):
    """Each dtype the kernels take: float32, float16, bfloat16."""
    return request.param


# ----------------------------------------------------------------------------------------------------------
# The backends an op's tests run on
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of an op, as a test runs it.

    ``name``: "reference", "triton", "cuda" (the registered op's backend names) or "cuda-emulation" (the CUDA
    kernels' code compiled for the CPU, which the registered op cannot dispatch to); ``device``: where its
    tensors live; ``kernels``: its functions with the contract of :mod:`mobilevitv2_kernels.reference`."""

    name: str
    device: str
    kernels: Any

    @property
    def registered(self) -> bool:
        """Whether the registered ops take it as their ``backend`` argument."""
        return self.name != "cuda-emulation"


# (name, device) of every implementation; the CUDA kernels (emulated or compiled) exist for the ops that the
# "cuda" backend has.
_IMPLEMENTATIONS = (
    ("reference", "cpu"),
    ("triton", "cpu"),
    ("cuda-emulation", "cpu"),
    ("reference", "cuda"),
    ("triton", "cuda"),
    ("cuda", "cuda"),
)


def _op_name(node, module) -> str:
    marker = node.get_closest_marker("op")
    if marker is not None:
        return marker.args[0]
    op = getattr(module, "OP", None)
    if op is None:
        raise pytest.UsageError(f"{module.__name__} uses a backend fixture but names no OP")
    return op


def _backend_params(op: str, registered_only: bool) -> list:
    params = []
    for name, device in _IMPLEMENTATIONS:
        if name in ("cuda", "cuda-emulation") and not backends.supports("cuda", op):
            continue
        if registered_only and name == "cuda-emulation":
            continue
        test_id = name if name in ("cuda", "cuda-emulation") else f"{name}-{device}"
        marks = [pytest.mark.gpu] if device == "cuda" else []
        params.append(pytest.param((name, device), id=test_id, marks=marks))
    return params


def _parametrized_directly(metafunc, name: str) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    for fixture, registered_only in (("backend", False), ("op_backend", True)):
        if fixture in metafunc.fixturenames and not _parametrized_directly(metafunc, fixture):
            op = _op_name(metafunc.definition, metafunc.module)
            metafunc.parametrize(fixture, _backend_params(op, registered_only), indirect=True)


def _make_backend(request) -> Backend:
    name, device = request.param
    op = _op_name(request.node, request.module)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if name == "cuda-emulation":
        return Backend(name, device, request.getfixturevalue("emulator"))
    if name == "cuda":
        reason = cuda_kernels.build_prerequisites_missing()
        if reason is not None:
            pytest.skip(f"cannot build the CUDA extension here: {reason}")
        reason = backends.unavailable_reason("cuda", "cuda", op)
        if reason is not None:  # a failed build fails the test
            pytest.fail(f"the CUDA backend is unavailable on a GPU machine: {reason}")
        return Backend(name, device, cuda_kernels.PoisonedCudaKernels(backends.implementation("cuda")))
    reason = backends.unavailable_reason(name, device, op)
    if reason is not None:
        pytest.skip(reason)
    return Backend(name, device, backends.implementation(name))


@pytest.fixture
def backend(request) -> Backend:
    """Each implementation of the module's op (parametrised by ``pytest_generate_tests``)."""
    return _make_backend(request)


@pytest.fixture
def op_backend(request) -> Backend:
    """Each backend the registered op dispatches to (the emulated CUDA kernels are not one of them)."""
    return _make_backend(request)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def triton_device(request) -> str:
    """Each device the Triton backend can run the module's op on here; the others skip with the reason."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = backends.unavailable_reason("triton", request.param, _op_name(request.node, request.module))
    if reason is not None:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def triton_module():
    """The Triton backend's module, for tests that call its launchers on CPU tensors (the interpreter);
    a skip saying why where it cannot run there."""
    reason = backends.unavailable_reason("triton", "cpu")
    if reason is not None:
        pytest.skip(reason)
    return backends.implementation("triton")


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> cuda_kernels.EmulatedKernels:
    """The CUDA kernels' bodies compiled for the CPU emulator, once per session (a compile error fails every
    test that needs it)."""
    reason = cuda_kernels.emulator_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return cuda_kernels.build_emulator(tmp_path_factory.mktemp("emulator"))
