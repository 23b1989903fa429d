"""The fused transformer-layer op (inference only): schema, input checks, fake kernel, dispatch to a backend.

``mobilevitv2::transformer_layer`` is one pre-norm MobileViTV2 transformer layer on (B, d, P, N) patches
(:func:`mobilevitv2_kernels.reference.transformer_layer_forward`):

    h = x + out_proj(separable_attention(qkv_proj(GroupNorm1(x))))
    y = h + ffn2(SiLU(ffn1(GroupNorm2(h))))

Why it has no derivative and no CUDA-extension kernel: docs/design.md, "Inference-only ops".
"""

from __future__ import annotations

import torch

from mobilevitv2_kernels import backends
from mobilevitv2_kernels.common import FLOAT_DTYPES
from mobilevitv2_kernels.inference_only import register_no_derivative
from mobilevitv2_kernels.weights import TransformerLayerWeights, schema_arguments, split

OP = "transformer_layer"
_NUM_WEIGHTS = len(TransformerLayerWeights._fields)


def check_inputs(x: torch.Tensor, weights: TransformerLayerWeights, eps: float) -> None:
    """Validate the op's arguments; the output has ``x``'s shape."""
    if x.dim() != 4:
        raise ValueError(f"transformer_layer expects x of shape (B, d, P, N), got shape {tuple(x.shape)}")
    named = weights._asdict()
    for name, t in {"x": x, **named}.items():
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"transformer_layer: {name} must be floating point (float32/16, bfloat16), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"transformer_layer: {name} is on {t.device} but x is on {x.device}")
    d = x.shape[1]
    F = named["w_ffn1"].shape[0] if named["w_ffn1"].dim() == 2 else -1
    expected = {
        "norm1_weight": (d,), "norm1_bias": (d,), "w_qkv": (1 + 2 * d, d), "b_qkv": (1 + 2 * d,),
        "w_out": (d, d), "b_out": (d,), "norm2_weight": (d,), "norm2_bias": (d,),
        "w_ffn1": (F, d), "b_ffn1": (F,), "w_ffn2": (d, F), "b_ffn2": (d,),
    }  # fmt: skip
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape or (name == "w_ffn1" and F < 1):
            want = f"(F, {d}) with F >= 1" if name == "w_ffn1" else str(shape)
            raise ValueError(f"transformer_layer: {name} must have shape {want} for d={d}, got {tuple(named[name].shape)}")
    if not eps > 0:
        raise ValueError(f"transformer_layer: eps must be positive, got {eps}")


def _unpack(args: tuple) -> tuple[TransformerLayerWeights, float, str]:
    """The op's arguments after x, as its schema orders them."""
    return TransformerLayerWeights(*args[:_NUM_WEIGHTS]), *args[_NUM_WEIGHTS:]


@torch.library.custom_op(
    "mobilevitv2::transformer_layer",
    mutates_args=(),
    schema=f"(Tensor x, {schema_arguments(TransformerLayerWeights)}, float eps, str backend) -> Tensor",
)
def _transformer_layer(x: torch.Tensor, *args) -> torch.Tensor:
    weights, eps, backend = _unpack(args)
    check_inputs(x, weights, eps)
    if not backends.supports(backend, OP):  # a direct torch.ops call with backend="cuda"
        raise backends.BackendUnavailableError(f"the {backend!r} backend has no {OP} kernel")
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    out = backends.implementation(backend).transformer_layer_forward(x, weights, eps)
    return backends.as_new_contiguous(out, x)


@_transformer_layer.register_fake
def _(x, *args):
    weights, eps, _ = _unpack(args)
    check_inputs(x, weights, eps)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


register_no_derivative(
    _transformer_layer, uses="the model uses it only in eval mode without gradients and runs its modules otherwise"
)


def transformer_layer(x: torch.Tensor, *weights, eps: float = 1e-5, backend: str = "auto") -> torch.Tensor:
    """One MobileViTV2 transformer layer for inference, fused.

    Args:
        x: (B, d, P, N) patches, float32/float16/bfloat16 (float64 on the reference backend), any strides.
        weights: a :class:`~mobilevitv2_kernels.weights.TransformerLayerWeights` (or its 12 tensors in
            order): the GroupNorms' affines (d,), the qkv projection (1 + 2d, d) with channels [query,
            key (d), value (d)], the output projection (d, d), the FFN's 1x1 convs (F, d) and (d, F) (SiLU
            between), each with its bias.
        eps: the GroupNorms' epsilon.
        backend: ``"auto"`` (Triton on CUDA, the reference elsewhere), ``"reference"`` or ``"triton"``;
            ``"cuda"`` has no kernel for this op and raises ``BackendUnavailableError``.

    Returns:
        (B, d, P, N) contiguous, ``x``'s dtype. Not differentiable: raises if grad mode is on and an input
        requires grad.
    """
    weights, (eps, backend) = split(TransformerLayerWeights, weights, [eps, backend])
    check_inputs(x, weights, eps)
    return torch.ops.mobilevitv2.transformer_layer(x, *weights, float(eps), backends.resolve(backend, x, OP))
