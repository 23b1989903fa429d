"""Never silently wrong: the first time a fused backend runs an op on a (device, dtype), one small case is
checked against the reference.

A new GPU, driver or compiler can miscompile a kernel that every CPU check passed. So before a backend's
kernel is trusted with an op on a device and dtype, :func:`verdict` runs a small fixed case (seeded, large
softmax logits, odd sizes) through it and through the float64 reference, and compares the two under the
numerics rules (:mod:`mobilevitv2_kernels.numerics`). A disagreement (or an exception, such as a failed
compile) disables that backend for that op on that device and dtype, with one warning naming op, backend,
device, dtype and the error; :func:`mobilevitv2_kernels.backends.resolve` then falls back to the next backend
for ``"auto"`` and raises :class:`KernelCheckError` for an explicitly chosen one. The verdict is kept for the
life of the process; :func:`report` lists every check run so far with its error, bound and cost.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _disable_current_modes

from mobilevitv2_kernels import numerics, reference
from mobilevitv2_kernels.weights import AttentionWeights, InvertedResidualWeights, TransformerLayerWeights


class KernelCheckWarning(UserWarning):
    """Warned once per (op, backend, device, dtype) whose first-use check failed; the op falls back."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    op: str
    backend: str
    device: str
    dtype: str
    error: float  # largest max-abs error over the case's outputs (inf for an exception or a non-finite value)
    bound: float  # the allowed error of that output
    seconds: float  # wall time of the check (kernel compilation included), synchronised
    failure: str | None  # None: the backend agreed with the reference

    @property
    def ok(self) -> bool:
        return self.failure is None


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    # on the CPU whatever the caller's default device (the generator is a CPU one)
    return torch.randn(*shape, generator=generator, device="cpu") * scale


# ----- the cases: each returns [(name, backend call, reference call)] on inputs already in the dtype --------
# ``call(module, dtype)`` runs the function of that module (a backend, or the reference) with the inputs
# cast to ``dtype``; the inputs are rounded to the checked dtype first, so the float64 reference sees the
# very values the kernel sees.

Call = Callable[[object, torch.dtype], torch.Tensor]


def _separable_attention_case(g: torch.Generator) -> tuple[list[torch.Tensor], list[tuple[str, Call]]]:
    d, P, N = 5, 4, 37
    qkv = _randn(g, 2, 1 + 2 * d, P, N)
    qkv[:, :1] *= 40.0  # logits beyond 88: a softmax without max-subtraction overflows float32
    grad_out = _randn(g, 2, d, P, N)
    return [qkv, grad_out], [
        ("forward", lambda m, t: m.separable_attention_forward(t[0])),
        ("backward", lambda m, t: m.separable_attention_backward(t[1], t[0])),
    ]


def _unfold_case(g):
    x = _randn(g, 2, 3, 9, 7).contiguous(memory_format=torch.channels_last)  # strided, odd size
    return [x], [("forward", lambda m, t: m.unfold_forward(t[0], 2, 2))]


def _fold_case(g):
    patches = _randn(g, 2, 3, 4, 12)
    return [patches], [("forward", lambda m, t: m.fold_forward(t[0], 9, 7, 2, 2))]


def _inverted_residual_case(g):
    c, e = 8, 16
    x = _randn(g, 2, c, 9, 9)
    expand = [_randn(g, e, c, scale=c**-0.5), _randn(g, e, scale=0.1), _randn(g, e, 9, scale=1 / 3),
              _randn(g, e, scale=0.1), _randn(g, c, e, scale=e**-0.5), _randn(g, c, scale=0.1)]  # fmt: skip
    depthwise = [_randn(g, c, 9, scale=1 / 3), _randn(g, c, scale=0.1), _randn(g, c, c, scale=c**-0.5)]
    # The kernel specialisations the model launches: stride 1 with expand and residual, stride 2 with expand
    # (the stages' down-sampling blocks), and without expand (the blocks' local convs), here at dilation 2.
    return [x, *expand, *depthwise], [
        ("stride 1", lambda m, t: m.inverted_residual_forward(t[0], InvertedResidualWeights(*t[1:7]), 1, 1, True)),
        ("stride 2", lambda m, t: m.inverted_residual_forward(t[0], InvertedResidualWeights(*t[1:7]), 2, 1, False)),
        ("no expand", lambda m, t: m.inverted_residual_forward(
            t[0], InvertedResidualWeights(None, None, t[7], t[8], t[9], t[6]), 2, 2, False)),
    ]


def _layer_parameters(g, d: int, f: int) -> list[torch.Tensor]:
    def affine():
        return [1.0 + _randn(g, d, scale=0.2), _randn(g, d, scale=0.2)]

    return [*affine(), _randn(g, 1 + 2 * d, d, scale=d**-0.5), _randn(g, 1 + 2 * d, scale=0.1),
            _randn(g, d, d, scale=d**-0.5), _randn(g, d, scale=0.1), *affine(),
            _randn(g, f, d, scale=d**-0.5), _randn(g, f, scale=0.1), _randn(g, d, f, scale=f**-0.5), _randn(g, d, scale=0.1)]  # fmt: skip


def _transformer_layer_case(g):
    d, f = 12, 24
    x = _randn(g, 2, d, 4, 19, scale=2.0) + 3.0  # far from zero: GroupNorm moments must be centred
    return [x, *_layer_parameters(g, d, f)], [
        ("forward", lambda m, t: m.transformer_layer_forward(t[0], TransformerLayerWeights(*t[1:]), 1e-5))
    ]


def _linear_self_attention_case(g):
    d = 12
    x = _randn(g, 2, d, 4, 19)
    p = _layer_parameters(g, d, 2 * d)
    return [x, p[2], p[3], p[4], p[5]], [
        ("forward", lambda m, t: m.linear_self_attention_forward(t[0], AttentionWeights(*t[1:])))
    ]


CASES: dict[str, Callable[[torch.Generator], tuple[list[torch.Tensor], list[tuple[str, Call]]]]] = {
    "separable_attention": _separable_attention_case,
    "unfold": _unfold_case,
    "fold": _fold_case,
    "inverted_residual": _inverted_residual_case,
    "transformer_layer": _transformer_layer_case,
    "linear_self_attention": _linear_self_attention_case,
}


_lock = threading.Lock()
_results: dict[tuple[str, str, str, torch.dtype], CheckResult] = {}


def _device_key(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(backend: str, module, op: str, device: torch.device, dtype: torch.dtype) -> CheckResult:
    """Run ``op``'s small case through ``module`` (a loaded backend) on ``device`` in ``dtype`` and compare
    it with the float64 reference on the same rounded inputs (not cached; see :func:`verdict`)."""
    device = _device_key(torch.device(device))
    start = time.perf_counter()
    worst = (-1.0, 0.0, 0.0)  # (error / bound, error, bound) of the worst output so far
    failure = None
    try:
        # no autocast: a caller's autocast region would recast the reference runs and so move the bound
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            tensors, calls = CASES[op](torch.Generator().manual_seed(0))
            low = [t.to(dtype).to(device) for t in tensors]
            exact = [t.double().cpu() for t in low]
            for name, call in calls:
                # The kernel runs before any reference on the device, so its output cannot land in a freed
                # block that already holds the right answer.
                out = call(module, low)
                expected = call(reference, exact)
                if out.shape != expected.shape:
                    failure = f"{name}: output shape {tuple(out.shape)}, expected {tuple(expected.shape)}"
                    worst = (float("inf"), float("inf"), 0.0)
                    break
                torch_lowp = call(reference, low) if dtype != torch.float32 else None
                error, bound = numerics.max_abs_error(out, expected), numerics.error_bound(expected, dtype, torch_lowp)
                if error / bound > worst[0]:
                    worst = (error / bound, error, bound)
                if not error <= bound:
                    failure = f"{name}: max abs error {error:.3g} > bound {bound:.3g}"
                    break
        _synchronize(device)
    except Exception as exc:  # a kernel that fails to compile or launch is as unusable as a wrong one
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        failure, worst = f"{type(exc).__name__}: {first_line}", (float("inf"), float("inf"), worst[2])
    dtype_name = str(dtype).removeprefix("torch.")
    return CheckResult(op, backend, str(device), dtype_name, worst[1], worst[2], time.perf_counter() - start, failure)


def verdict(backend: str, module, op: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if ``backend`` (its loaded ``module``) may run ``op`` on ``device`` in ``dtype``, else why not.
    The first call for each (backend, op, device, dtype) runs :func:`check`; a failure warns once
    (:class:`KernelCheckWarning`). Under a tracing mode (fake tensors: ``torch.export``, ``make_fx``) the
    check runs on real tensors with the modes set aside, since the traced graph keeps the backend it was
    given. Nothing can run during CUDA graph capture: the call answers None there and checks at the next
    call outside a capture."""
    device = _device_key(torch.device(device))
    key = (backend, op, str(device), dtype)
    with _lock:
        result = _results.get(key)
        if result is None:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                return None
            with _disable_current_modes():  # real tensors even while tracing with fake ones
                result = _results[key] = check(backend, module, op, device, dtype)
            if not result.ok:
                warnings.warn(
                    f"mobilevitv2_kernels: the {backend!r} kernel of {op} disagrees with the reference on "
                    f"{result.device} in {result.dtype} ({result.failure}); {op} will not use it there "
                    "('auto' falls back to the next backend, an explicit choice of it raises)",
                    KernelCheckWarning,
                    stacklevel=4,
                )
    return result.failure


def report() -> list[CheckResult]:
    """Every check run in this process so far, in order."""
    with _lock:
        return list(_results.values())


def forget() -> None:
    """Drop every verdict (the next use of each backend checks again)."""
    with _lock:
        _results.clear()
