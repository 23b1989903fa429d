"""The fused inverted-residual op (inference only): schema, input checks, fake kernel, dispatch to a backend.

``mobilevitv2::inverted_residual`` is the MobileNetV2 block with BatchNorm folded into the weights
(:func:`mobilevitv2_kernels.folding.fold_batchnorm`): expand 1x1 + SiLU, depthwise 3x3 + SiLU, reduce 1x1
(+ x). Without the expand conv (expansion ratio 1) it is the depthwise-separable conv of the MobileViTV2
blocks' local representation. Why it has no derivative and no CUDA-extension kernel: docs/design.md,
"Inference-only ops".
"""

from __future__ import annotations

import torch

from mobilevitv2_kernels import backends
from mobilevitv2_kernels.common import FLOAT_DTYPES, output_memory_format
from mobilevitv2_kernels.inference_only import register_no_derivative
from mobilevitv2_kernels.weights import InvertedResidualWeights, schema_arguments, split

OP = "inverted_residual"


def _out_size(size: int, stride: int) -> int:
    return (size + stride - 1) // stride  # 3x3 taps, padding = dilation: ceil(size / stride) for any dilation


def check_inputs(
    x: torch.Tensor, weights: InvertedResidualWeights, stride: int, dilation: int, residual: bool
) -> tuple[int, int, int, int]:
    """Validate the op's arguments; return the output shape (B, C_out, ceil(H/stride), ceil(W/stride))."""
    w_expand, b_expand, w_dw, b_dw, w_reduce, b_reduce = weights
    if x.dim() != 4:
        raise ValueError(f"inverted_residual expects x of shape (B, C_in, H, W), got shape {tuple(x.shape)}")
    if (w_expand is None) != (b_expand is None):
        raise ValueError("inverted_residual: w_expand and b_expand must both be given or both be None (no expand conv)")
    named = {name: t for name, t in {"x": x, **weights._asdict()}.items() if t is not None}
    for name, t in named.items():
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"inverted_residual: {name} must be floating point (float32/16, bfloat16), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"inverted_residual: {name} is on {t.device} but x is on {x.device}")
    B, C_in, H, W = x.shape
    if w_expand is not None and (w_expand.dim() != 2 or w_expand.shape[1] != C_in):
        raise ValueError(f"w_expand must be (E, C_in={C_in}), got shape {tuple(w_expand.shape)}")
    E = C_in if w_expand is None else w_expand.shape[0]
    if tuple(w_dw.shape) not in ((E, 9), (E, 1, 3, 3)):
        raise ValueError(f"w_dw must be (E={E}, 9) or (E, 1, 3, 3), got shape {tuple(w_dw.shape)}")
    if w_reduce.dim() != 2 or w_reduce.shape[1] != E:
        raise ValueError(f"w_reduce must be (C_out, E={E}), got shape {tuple(w_reduce.shape)}")
    C_out = w_reduce.shape[0]
    for name, bias, n in (("b_expand", b_expand, E), ("b_dw", b_dw, E), ("b_reduce", b_reduce, C_out)):
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"{name} must be ({n},), got shape {tuple(bias.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"inverted_residual supports stride 1 or 2, got {stride}")
    if dilation < 1:
        raise ValueError(f"dilation must be positive, got {dilation}")
    if residual and (stride != 1 or C_in != C_out):
        raise ValueError(
            f"residual=True needs stride 1 and C_in == C_out, got stride {stride}, C_in {C_in}, C_out {C_out}"
        )
    return (B, C_out, _out_size(H, stride), _out_size(W, stride))


_NUM_WEIGHTS = len(InvertedResidualWeights._fields)


def _unpack(args: tuple) -> tuple[InvertedResidualWeights, int, int, bool, str]:
    """The op's arguments after x, as its schema orders them."""
    return InvertedResidualWeights(*args[:_NUM_WEIGHTS]), *args[_NUM_WEIGHTS:]


@torch.library.custom_op(
    "mobilevitv2::inverted_residual",
    mutates_args=(),
    schema=f"(Tensor x, {schema_arguments(InvertedResidualWeights)}, int stride, int dilation, bool residual, "
    "str backend) -> Tensor",
)
def _inverted_residual(x: torch.Tensor, *args) -> torch.Tensor:
    weights, stride, dilation, residual, backend = _unpack(args)
    shape = check_inputs(x, weights, stride, dilation, residual)
    if not backends.supports(backend, OP):  # a direct torch.ops call with backend="cuda"
        raise backends.BackendUnavailableError(f"the {backend!r} backend has no {OP} kernel")
    fmt = output_memory_format(x)
    if x.numel() == 0 or shape[1] == 0:
        return x.new_zeros(shape).contiguous(memory_format=fmt)
    out = backends.implementation(backend).inverted_residual_forward(x, weights, stride, dilation, residual)
    out = out.contiguous(memory_format=fmt)
    if out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():  # never return an alias of x
        out = out.clone(memory_format=fmt)
    return out


@_inverted_residual.register_fake
def _(x, *args):
    weights, stride, dilation, residual, _ = _unpack(args)
    shape = check_inputs(x, weights, stride, dilation, residual)
    return x.new_empty(shape).contiguous(memory_format=output_memory_format(x))


register_no_derivative(
    _inverted_residual, uses="the model uses it only in eval mode without gradients and runs its eager modules otherwise"
)


def inverted_residual(
    x: torch.Tensor, *weights, stride: int = 1, dilation: int = 1, residual: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Fused MobileNetV2 inverted residual for inference, BatchNorm already folded into the weights.

    Args:
        x: (B, C_in, H, W) float32/float16/bfloat16 (float64 on the reference backend), any strides.
        weights: an :class:`~mobilevitv2_kernels.weights.InvertedResidualWeights` (or its 6 tensors in
            order), float32 (as ``fold_batchnorm`` returns them) or ``x``'s dtype: the expand 1x1 (E, C_in)
            and bias, both None without an expand conv (E = C_in); the depthwise 3x3 (E, 9) or (E, 1, 3, 3)
            and bias, with ``stride`` (1 or 2), ``dilation`` and padding = dilation (out-of-image taps see
            a zero *expanded* value); the reduce 1x1 (C_out, E) and bias. SiLU follows the first two convs.
        residual: add ``x`` to the result (needs stride 1 and C_in == C_out).
        backend: ``"auto"`` (Triton on CUDA, the reference elsewhere), ``"reference"`` or ``"triton"``;
            ``"cuda"`` has no kernel for this op and raises ``BackendUnavailableError``.

    Returns:
        (B, C_out, ceil(H/stride), ceil(W/stride)) in ``x``'s dtype, channels_last if ``x`` is, else
        contiguous. Not differentiable: raises if grad mode is on and an input requires grad.
    """
    weights, (stride, dilation, residual, backend) = split(
        InvertedResidualWeights, weights, [stride, dilation, residual, backend]
    )
    check_inputs(x, weights, stride, dilation, residual)
    return torch.ops.mobilevitv2.inverted_residual(
        x, *weights, stride, dilation, residual, backends.resolve(backend, x, OP)
    )
