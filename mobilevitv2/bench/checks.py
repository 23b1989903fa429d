"""The output check that keeps a wrong provider from being timed: every case builder wraps its providers in
:class:`Deferred`, which checks the first output (against a float32 oracle computed under
``mobilevitv2_kernels.numerics.strict_fp32``) before any timed call, within :data:`CHECK_TOLERANCE`."""

from __future__ import annotations

from collections.abc import Callable

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# A provider whose output differs from its float32 oracle by more than this (relative L2) is reported as
# wrong and not timed: a coarse guard against a broken kernel on a new device, not a numerics test (the
# test suite is that). The fp32 oracle is computed with TF32 off (numerics.strict_fp32), so it is exact to
# float32 rounding; a float32 provider itself runs with PyTorch's defaults, where cuDNN convolutions use
# TF32 (a 10-bit mantissa, ~1e-3 relative per layer), which stays well inside 1e-2 for the whole model.
CHECK_TOLERANCE = {torch.float32: 1e-2, torch.float16: 5e-2, torch.bfloat16: 1e-1}


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected|| in float64 (inf for a non-finite ``got``)."""
    got, expected = got.double(), expected.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - expected).norm() / expected.norm().clamp_min(1e-30)).item()


class Deferred:
    """A case's callable built on first use (so that models of a group are not all on the device at once),
    whose first result is checked before anything is timed: ``build(provider)`` returns ``(fn, check)``,
    ``check(fn())`` returns None or what is wrong; a problem raises, and the harness reports it as the
    case's error."""

    def __init__(self, build: Callable[[str], tuple[Callable, Callable]], provider: str) -> None:
        self.build, self.provider, self.fn = build, provider, None

    def __call__(self):
        if self.fn is None:
            fn, check = self.build(self.provider)
            problem = check(fn())
            if problem:
                raise AssertionError(problem)
            self.fn = fn
        return self.fn()


def randomize_for_check(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights whose activations neither vanish nor explode, so the output check has signal: fan-in
    normal convs, and BatchNorm/GroupNorm parameters and running statistics drawn around identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.weight[0].numel() ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=gen)
                module.running_mean.uniform_(-0.5, 0.5, generator=gen)
                module.running_var.uniform_(0.5, 2.0, generator=gen)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5, generator=gen)
    return model
