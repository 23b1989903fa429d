"""Which implementations of the ops can run here, and which one ``backend="auto"`` picks.

A backend is a module with the functions of :mod:`mobilevitv2_kernels.reference`, each returning a new
tensor of the input's dtype; :data:`UNSUPPORTED_OPS` lists the ops a backend lacks, so that ``"auto"`` never
picks it for them. Backends load lazily, once per process: one that cannot load (no Triton, no GPU, no
compiler, a failed build) is reported with its reason and never breaks ``import mobilevitv2_kernels``, and
one that loads is still checked against the reference on first use (:mod:`mobilevitv2_kernels.self_check`).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from mobilevitv2_kernels import self_check
from mobilevitv2_kernels.common import BackendUnavailableError, KernelCheckError, triton_interpreter_enabled  # noqa: F401
from mobilevitv2_kernels.numerics import KERNEL_DTYPES

BACKEND_NAMES = ("reference", "triton", "cuda")
# Ops a backend does not implement (op names as in the ``mobilevitv2::`` namespace). A backend not listed
# implements every op.
UNSUPPORTED_OPS = {"cuda": frozenset({"inverted_residual", "transformer_layer", "linear_self_attention"})}
# The backends "auto" tries, in order, per device type; the reference is the last resort everywhere. On the
# CPU the Triton interpreter is a test vehicle, not a fast path, so "auto" takes the reference there.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("cuda", "triton")}


@functools.cache
def _load(name: str) -> ModuleType:
    if name == "reference":
        return importlib.import_module("mobilevitv2_kernels.reference")
    if name == "triton":
        try:
            return importlib.import_module("mobilevitv2_kernels.triton_kernels")
        except ImportError as exc:  # triton missing on this platform
            raise BackendUnavailableError(f"the 'triton' backend needs the triton package ({exc})") from exc
    if name == "cuda":
        from mobilevitv2_kernels import cuda_extension

        return cuda_extension.load()  # raises BackendUnavailableError with the reason
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES + ('auto',)}")


def supports(name: str, op: str | None) -> bool:
    """Whether backend ``name`` implements ``op`` (None: the ops every backend has)."""
    return op is None or op not in UNSUPPORTED_OPS.get(name, ())


@torch.compiler.assume_constant_result  # torch.compile evaluates this at trace time instead of tracing imports
def unavailable_reason(name: str, device_type: str, op: str | None = None) -> str | None:
    """None if backend ``name`` can run ``op`` (default: the common ops) on ``device_type`` ("cpu",
    "cuda"), else a short reason."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKEND_NAMES + ('auto',)}")
    if not supports(name, op):
        return f"the {name!r} backend has no {op} kernel"
    if name == "reference":
        return None
    if device_type == "cpu":
        if name == "cuda":
            return "the 'cuda' backend runs only on CUDA tensors"
        if not triton_interpreter_enabled():
            return "the 'triton' backend runs on CPU tensors only under TRITON_INTERPRET=1"
    elif device_type == "cuda":
        if name == "triton" and triton_interpreter_enabled():
            return "TRITON_INTERPRET=1 is set, so Triton kernels cannot run on CUDA tensors"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
    else:
        return f"kernels support cpu and cuda tensors, not {device_type}"
    try:
        _load(name)
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def available_backends(device: str | torch.device | None = None, op: str | None = None) -> list[str]:
    """The backends that can run ``op`` (default: the common ops) on ``device`` (default: CUDA if present,
    else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = torch.device(device).type
    return [name for name in BACKEND_NAMES if unavailable_reason(name, device_type, op) is None]


@torch.compiler.assume_constant_result  # run once at trace time under torch.compile, like unavailable_reason
def check_failure(name: str, op: str, device_type: str, device_index: int | None, dtype: torch.dtype) -> str | None:
    """None if backend ``name`` (available here) computes ``op`` on the device in ``dtype`` as the reference
    does; else why not. The first call per (backend, op, device, dtype) runs one small case
    (:func:`mobilevitv2_kernels.self_check.verdict`); later calls reuse that verdict."""
    if name == "reference":
        return None
    return self_check.verdict(name, _load(name), op, torch.device(device_type, device_index), dtype)


def auto_backend(device: str | torch.device, dtype: torch.dtype, op: str | None = None) -> str:
    """The backend ``"auto"`` selects for ``op`` on ``device``: the first of :data:`AUTO_ORDER` that is
    available, has a kernel for ``op`` and (for a named ``op``) passed its first-use check on this device
    and dtype; else the reference. On the CPU this is always the reference.

    The CUDA-before-Triton order, measured on an H200 (fp16, the three width-1.0 stage shapes at batch
    256, commit f37c05c; bench/results/gpu-h200-f37c05c): separable attention forward+backward through
    autograd 0.26-0.33 ms on CUDA, 0.65-0.91 ms on Triton (far above Triton's forward and backward kernels
    timed alone, 0.09-0.34 ms together, probably host overhead of the launches, not profiled; timed
    alone, Triton is faster at (256, 192, 4, 64)); unfold and fold within 1.6x either way at the first two
    shapes, CUDA 2.5x faster at N=16."""
    device = torch.device(device)
    if dtype not in KERNEL_DTYPES:
        return "reference"
    for name in AUTO_ORDER.get(device.type, ()):
        if unavailable_reason(name, device.type, op) is not None:
            continue
        if op is None or check_failure(name, op, device.type, device.index, dtype) is None:
            return name
    return "reference"


def resolve(backend: str, tensor: torch.Tensor, op: str | None = None) -> str:
    """Turn a user's backend choice into a concrete backend for ``op`` (default: the common ops) on
    ``tensor``, or raise a clear error."""
    if backend == "auto":
        return auto_backend(tensor.device, tensor.dtype, op)
    reason = unavailable_reason(backend, tensor.device.type, op)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {backend!r} cannot run here: {reason}. "
            f"Available for {tensor.device.type}: {available_backends(tensor.device, op)}"
        )
    if backend != "reference" and tensor.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"backend {backend!r} supports float32, float16 and bfloat16, got {tensor.dtype}; "
            "use backend='reference' for other dtypes"
        )
    if op is not None:
        failure = check_failure(backend, op, tensor.device.type, tensor.device.index, tensor.dtype)
        if failure is not None:
            raise KernelCheckError(
                f"backend {backend!r} computes {op} wrongly on {tensor.device} in {tensor.dtype} (its first-use "
                f"check against the reference: {failure}); use backend='auto' to fall back, or 'reference'"
            )
    return backend


def implementation(name: str) -> ModuleType:
    """The loaded module of a concrete backend name (already validated by :func:`resolve`)."""
    return _load(name)


def as_new_contiguous(out: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """A registered op must return a fresh tensor with the strides its fake kernel promises (contiguous).
    The kernels already do; this only copies when a reference result is a strided view or aliases an input."""
    out = out.contiguous()
    storage = out.untyped_storage().data_ptr()
    if out.numel() and any(t.numel() and t.untyped_storage().data_ptr() == storage for t in inputs):
        out = out.clone(memory_format=torch.contiguous_format)
    return out
