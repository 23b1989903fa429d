"""The unfold/fold ops: schema, input checks, fake kernels, autograd, dispatch to a backend.

``mobilevitv2::unfold(Tensor x, int patch_h, int patch_w, str backend) -> Tensor`` turns a (B, C, H, W)
map into (B, C, P, N) patches in transformers' ordering (see :mod:`mobilevitv2_kernels.reference`);
``mobilevitv2::fold(Tensor patches, int height, int width, int patch_h, int patch_w, str backend)`` is its
adjoint. Each op's backward is the other op, so gradients go through the same kernels.
"""

from __future__ import annotations

import torch

from mobilevitv2_kernels import backends
from mobilevitv2_kernels.common import FLOAT_DTYPES



def _check_patch(patch_h: int, patch_w: int) -> None:
    if patch_h < 1 or patch_w < 1:
        raise ValueError(f"patch size must be positive, got ({patch_h}, {patch_w})")


def _check_float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} expects a floating-point tensor (float32/16, bfloat16), got {t.dtype}")


def check_unfold_input(x: torch.Tensor, patch_h: int, patch_w: int) -> tuple[int, int, int, int]:
    """Validate (B, C, H, W) input; return the output shape (B, C, P, N)."""
    if x.dim() != 4:
        raise ValueError(f"unfold expects a 4-D (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    _check_float("unfold", x)
    _check_patch(patch_h, patch_w)
    B, C, H, W = x.shape
    return (B, C, patch_h * patch_w, (H // patch_h) * (W // patch_w))


def check_fold_input(patches: torch.Tensor, height: int, width: int, patch_h: int, patch_w: int) -> None:
    """Validate (B, C, P, N) patches against the output size and patch size."""
    if patches.dim() != 4:
        raise ValueError(f"fold expects 4-D (B, C, P, N) patches, got shape {tuple(patches.shape)}")
    _check_float("fold", patches)
    _check_patch(patch_h, patch_w)
    if height < 0 or width < 0:
        raise ValueError(f"fold output size must be non-negative, got ({height}, {width})")
    expected = (patch_h * patch_w, (height // patch_h) * (width // patch_w))
    if tuple(patches.shape[2:]) != expected:
        raise ValueError(
            f"fold: patches of shape {tuple(patches.shape)} do not fit output size ({height}, {width}) with "
            f"patch ({patch_h}, {patch_w}); expected (B, C, {expected[0]}, {expected[1]})"
        )


@torch.library.custom_op("mobilevitv2::unfold", mutates_args=())
def _unfold(x: torch.Tensor, patch_h: int, patch_w: int, backend: str) -> torch.Tensor:
    shape = check_unfold_input(x, patch_h, patch_w)
    if x.numel() == 0 or shape[3] == 0:
        return x.new_zeros(shape)
    out = backends.implementation(backend).unfold_forward(x, patch_h, patch_w)
    return backends.as_new_contiguous(out, x)


@_unfold.register_fake
def _(x: torch.Tensor, patch_h: int, patch_w: int, backend: str) -> torch.Tensor:
    return x.new_empty(check_unfold_input(x, patch_h, patch_w))


@torch.library.custom_op("mobilevitv2::fold", mutates_args=())
def _fold(patches: torch.Tensor, height: int, width: int, patch_h: int, patch_w: int, backend: str) -> torch.Tensor:
    check_fold_input(patches, height, width, patch_h, patch_w)
    B, C = patches.shape[:2]
    if patches.numel() == 0:
        return patches.new_zeros((B, C, height, width))
    out = backends.implementation(backend).fold_forward(patches, height, width, patch_h, patch_w)
    return backends.as_new_contiguous(out, patches)


@_fold.register_fake
def _(patches: torch.Tensor, height: int, width: int, patch_h: int, patch_w: int, backend: str) -> torch.Tensor:
    check_fold_input(patches, height, width, patch_h, patch_w)
    return patches.new_empty((patches.shape[0], patches.shape[1], height, width))


def _unfold_setup_context(ctx, inputs, output):
    x, patch_h, patch_w, backend = inputs
    ctx.size_and_patch = (x.shape[2], x.shape[3], patch_h, patch_w)
    ctx.backend = backend


def _unfold_backward(ctx, grad):
    height, width, patch_h, patch_w = ctx.size_and_patch
    return torch.ops.mobilevitv2.fold(grad, height, width, patch_h, patch_w, ctx.backend), None, None, None


def _fold_setup_context(ctx, inputs, output):
    _, _, _, patch_h, patch_w, backend = inputs
    ctx.patch = (patch_h, patch_w)
    ctx.backend = backend


def _fold_backward(ctx, grad):
    patch_h, patch_w = ctx.patch
    return torch.ops.mobilevitv2.unfold(grad, patch_h, patch_w, ctx.backend), None, None, None, None, None


_unfold.register_autograd(_unfold_backward, setup_context=_unfold_setup_context)
_fold.register_autograd(_fold_backward, setup_context=_fold_setup_context)


def _pair(patch_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(patch_size, int):
        return patch_size, patch_size
    patch_h, patch_w = patch_size
    return int(patch_h), int(patch_w)


def unfold(x: torch.Tensor, patch_size: int | tuple[int, int] = (2, 2), backend: str = "auto") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ph*pw, (H//ph)*(W//pw)) patches, exactly transformers' ``F.unfold`` + reshape.

    P is row-major inside the patch, N row-major over the patch grid. Rows/columns beyond a multiple of the
    patch are dropped (transformers' behaviour). Any input strides; output is contiguous.
    """
    patch_h, patch_w = _pair(patch_size)
    check_unfold_input(x, patch_h, patch_w)
    return torch.ops.mobilevitv2.unfold(x, patch_h, patch_w, backends.resolve(backend, x, "unfold"))


def fold(
    patches: torch.Tensor,
    output_size: tuple[int, int],
    patch_size: int | tuple[int, int] = (2, 2),
    backend: str = "auto",
) -> torch.Tensor:
    """(B, C, ph*pw, N) patches -> (B, C, H, W), the adjoint of :func:`unfold` (transformers' ``F.fold``):
    positions that ``unfold`` dropped come out as zeros. Any input strides; output is contiguous."""
    patch_h, patch_w = _pair(patch_size)
    height, width = (int(s) for s in output_size)
    check_fold_input(patches, height, width, patch_h, patch_w)
    return torch.ops.mobilevitv2.fold(patches, height, width, patch_h, patch_w, backends.resolve(backend, patches, "fold"))
