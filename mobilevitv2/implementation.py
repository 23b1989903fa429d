"""How the model runs: reference PyTorch or the fused kernels, chosen per part, stored on the modules.

Three parts have fused kernels (:data:`PARTS`): ``attention`` (unfold, separable attention and fold of each
MobileViTV2 block; differentiable), ``conv`` (the inverted residuals and the blocks' local convs) and
``transformer`` (each transformer layer as one op), the last two inference only. How a choice is validated,
stored and resolved: docs/design.md, "Configuration and implementation choices".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

import mobilevitv2_kernels

REFERENCE = "reference"
AUTO = "auto"


@dataclass(frozen=True)
class Part:
    name: str
    option: str  # the keyword that sets it alone (from_pretrained, the command line)
    op: str  # the fused op it runs (for "which backends can run it here")
    choices: tuple[str, ...]
    attribute: str  # where the modules that use it store the choice (None: the reference path)
    default: str


PARTS = {
    "attention": Part("attention", "attn_implementation", "separable_attention",
                      (AUTO, REFERENCE, "triton", "cuda"), "attention_backend", AUTO),
    "conv": Part("conv", "conv_implementation", "inverted_residual", (AUTO, REFERENCE, "triton"), "conv_backend", REFERENCE),
    "transformer": Part("transformer", "transformer_implementation", "transformer_layer",
                        (AUTO, REFERENCE, "triton"), "transformer_backend", REFERENCE),
}  # fmt: skip
OPTIONS = {part.option: part for part in PARTS.values()}
PRESETS = ("fused", REFERENCE)
# Where "auto" takes each part's fused kernels: the device types, and for the transformer layer the least
# number of patches N (the last dimension of its (B, d, P, N) input). Measured on an H200 (fp16, batch 256,
# commit f37c05c; bench/results/gpu-h200-f37c05c): the fused attention beats the reference 4.1-4.5x forward
# and 1.5-3.2x forward+backward at the three width-1.0 stage shapes; the fused inverted residual is 1.3-24x
# slower than cuDNN's three convolutions at the five block shapes measured (not layer.3's down-sampling
# block, nor the local-conv form without an expand conv), so "auto" never takes it; the fused transformer
# layer is 1.5x faster than the module at N=256 (d=128) and slower at N=64 (d=192: 0.76x) and N=16 (d=256:
# 0.46x), one point per N, all at batch 256, so the threshold is a coarse one. Nothing on the CPU, where
# Triton runs only in its interpreter (a test vehicle).
FUSED_IS_FASTER: dict[str, frozenset[str]] = {
    "attention": frozenset({"cuda"}),
    "conv": frozenset(),
    "transformer": frozenset({"cuda"}),
}
FUSED_MIN_PATCHES: dict[str, int] = {"transformer": 256}
# The word this package used for the reference path before; still accepted, with one warning.
_OLD_REFERENCE_WORD = "eager"
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, FutureWarning, stacklevel=4)


def normalize(part: str, name: str) -> str:
    """``name`` as a valid choice for ``part`` ("eager" becomes "reference", with one warning); a clear
    ValueError otherwise."""
    spec = PARTS[part]
    if name == _OLD_REFERENCE_WORD:
        warn_once("eager", f"{spec.option}='eager' is now called 'reference'; 'eager' still works")
        return REFERENCE
    if name not in spec.choices:
        raise ValueError(f"{spec.option} must be one of {spec.choices}, got {name!r}")
    return name


def check_available(part: str, name: str, device: torch.device | str | None) -> None:
    """Raise ``BackendUnavailableError`` naming what is available if the fused backend ``name`` cannot run
    ``part`` on ``device`` (default: CUDA if present, else the CPU). "reference" and "auto" always run."""
    if name in (AUTO, REFERENCE):
        return
    if device is None or torch.device(device).type == "meta":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = PARTS[part]
    available = mobilevitv2_kernels.available_backends(device, op=spec.op)
    if name not in available:
        choices = [AUTO, REFERENCE] + [b for b in available if b != REFERENCE]
        raise mobilevitv2_kernels.BackendUnavailableError(
            f"{spec.option}={name!r} cannot run on {torch.device(device).type} here; available: {choices}"
        )


def resolve(
    preset: str | None = None, current: dict[str, str] | None = None, **parts: str | None
) -> dict[str, str]:
    """The choice of every part: ``current`` (default: each part's default), then the ``preset`` ("fused":
    every part "auto"; "reference"), then the parts named (``attention=``, ``conv=``, ``transformer=``)."""
    choices = dict(current) if current is not None else {name: spec.default for name, spec in PARTS.items()}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"implementation preset must be one of {PRESETS}, got {preset!r}")
        choices = {name: AUTO if preset == "fused" else REFERENCE for name in PARTS}
    for name, value in parts.items():
        if name not in PARTS:
            raise TypeError(f"unknown part {name!r}; the parts are {tuple(PARTS)}")
        if value is not None:
            choices[name] = normalize(name, value)
    return choices


def backend_for(choice: str | None, part: str, x: torch.Tensor) -> str | None:
    """The kernel backend a module runs ``part`` with on input ``x``, or None for the reference path."""
    if choice is None or choice == REFERENCE:
        return None
    if choice == AUTO and (
        x.device.type not in FUSED_IS_FASTER[part] or x.shape[-1] < FUSED_MIN_PATCHES.get(part, 0)
    ):
        return None
    return choice


def inference_fusion_applies(module: torch.nn.Module, backend: str | None, x: torch.Tensor) -> bool:
    """Whether an inference-only fused op may run in ``module`` on ``x``: a backend, eval mode, and no
    gradient needed (the inference-only ops have no derivative)."""
    if backend is None or module.training:
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())))
