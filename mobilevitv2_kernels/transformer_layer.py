"""The fused transformer-layer op (inference only): schema, input checks, fake kernel, dispatch to a backend.

``mobilevitv2::transformer_layer(Tensor x, Tensor norm1_weight, Tensor norm1_bias, Tensor w_qkv,
Tensor b_qkv, Tensor w_out, Tensor b_out, Tensor norm2_weight, Tensor norm2_bias, Tensor w_ffn1,
Tensor b_ffn1, Tensor w_ffn2, Tensor b_ffn2, float eps, str backend) -> Tensor`` is one pre-norm MobileViTV2
transformer layer on (B, d, P, N) patches (:func:`mobilevitv2_kernels.reference.transformer_layer_forward`):

    h = x + out_proj(separable_attention(qkv_proj(GroupNorm1(x))))
    y = h + ffn2(SiLU(ffn1(GroupNorm2(h))))

Inference only, like ``inverted_residual``: the op has no derivative, and calling it with grad mode on and
an input that requires grad raises ``RuntimeError`` at once. ``MobileViTV2TransformerLayer`` uses it only in
eval mode when no gradient is needed and runs its modules otherwise. The CUDA extension has no kernel for
it (``backends.UNSUPPORTED_OPS``); ``backend="auto"`` picks Triton on CUDA and the reference on the CPU.
"""

from __future__ import annotations

import torch

from mobilevitv2_kernels import backends
from mobilevitv2_kernels.common import FLOAT_DTYPES
from mobilevitv2_kernels.inference_only import register_no_derivative

OP = "transformer_layer"
_PARAMETER_NAMES = (
    "norm1_weight", "norm1_bias", "w_qkv", "b_qkv", "w_out", "b_out",
    "norm2_weight", "norm2_bias", "w_ffn1", "b_ffn1", "w_ffn2", "b_ffn2",
)  # fmt: skip


def check_inputs(x: torch.Tensor, *parameters: torch.Tensor, eps: float) -> None:
    """Validate the op's arguments (``parameters`` in the schema's order); the output has ``x``'s shape."""
    if x.dim() != 4:
        raise ValueError(f"transformer_layer expects x of shape (B, d, P, N), got shape {tuple(x.shape)}")
    named = dict(zip(_PARAMETER_NAMES, parameters))
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


@torch.library.custom_op("mobilevitv2::transformer_layer", mutates_args=())
def _transformer_layer(
    x: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    w_ffn1: torch.Tensor,
    b_ffn1: torch.Tensor,
    w_ffn2: torch.Tensor,
    b_ffn2: torch.Tensor,
    eps: float,
    backend: str,
) -> torch.Tensor:
    parameters = (norm1_weight, norm1_bias, w_qkv, b_qkv, w_out, b_out, norm2_weight, norm2_bias,
                  w_ffn1, b_ffn1, w_ffn2, b_ffn2)  # fmt: skip
    check_inputs(x, *parameters, eps=eps)
    if not backends.supports(backend, OP):  # a direct torch.ops call with backend="cuda"
        raise backends.BackendUnavailableError(f"the {backend!r} backend has no {OP} kernel")
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    out = backends.implementation(backend).transformer_layer_forward(x, *parameters, eps)
    return backends.as_new_contiguous(out, x)


@_transformer_layer.register_fake
def _(x, norm1_weight, norm1_bias, w_qkv, b_qkv, w_out, b_out, norm2_weight, norm2_bias, w_ffn1, b_ffn1,
      w_ffn2, b_ffn2, eps, backend):  # fmt: skip
    check_inputs(x, norm1_weight, norm1_bias, w_qkv, b_qkv, w_out, b_out, norm2_weight, norm2_bias,
                 w_ffn1, b_ffn1, w_ffn2, b_ffn2, eps=eps)  # fmt: skip
    return torch.empty_like(x, memory_format=torch.contiguous_format)


register_no_derivative(
    _transformer_layer, uses="the model uses it only in eval mode without gradients and runs its modules otherwise"
)


def transformer_layer(
    x: torch.Tensor,
    norm1_weight: torch.Tensor,
    norm1_bias: torch.Tensor,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor,
    w_out: torch.Tensor,
    b_out: torch.Tensor,
    norm2_weight: torch.Tensor,
    norm2_bias: torch.Tensor,
    w_ffn1: torch.Tensor,
    b_ffn1: torch.Tensor,
    w_ffn2: torch.Tensor,
    b_ffn2: torch.Tensor,
    eps: float = 1e-5,
    backend: str = "auto",
) -> torch.Tensor:
    """One MobileViTV2 transformer layer for inference, fused.

    Args:
        x: (B, d, P, N) patches, float32/float16/bfloat16 (float64 on the reference backend), any strides.
        norm1_weight, norm1_bias: (d,): the one-group GroupNorm before the attention.
        w_qkv, b_qkv: (1 + 2d, d), (1 + 2d,): the qkv 1x1 projection, channels [query, key (d), value (d)].
        w_out, b_out: (d, d), (d,): the attention's output 1x1 projection.
        norm2_weight, norm2_bias: (d,): the one-group GroupNorm before the FFN.
        w_ffn1, b_ffn1, w_ffn2, b_ffn2: (F, d), (F,), (d, F), (d,): the FFN's 1x1 convs (SiLU between).
        eps: the GroupNorms' epsilon.
        backend: ``"auto"`` (Triton on CUDA, the reference elsewhere), ``"reference"`` or ``"triton"``;
            ``"cuda"`` has no kernel for this op and raises ``BackendUnavailableError``.

    The Triton backend never forms the keys: since the softmax scores sum to one, the context vector is the
    key projection of the score-weighted mean of the normalised input. It runs five kernels and nothing
    else (GroupNorm moments; scores, their weighted mean and its key projection; the value projection +
    ReLU + context + output projection + residual; moments again; the FFN + residual), with float32
    statistics and accumulation, reading the parameters as they are.

    Returns:
        (B, d, P, N) contiguous, ``x``'s dtype. Not differentiable: raises if grad mode is on and an input
        requires grad.
    """
    parameters = (norm1_weight, norm1_bias, w_qkv, b_qkv, w_out, b_out, norm2_weight, norm2_bias,
                  w_ffn1, b_ffn1, w_ffn2, b_ffn2)  # fmt: skip
    check_inputs(x, *parameters, eps=eps)
    return torch.ops.mobilevitv2.transformer_layer(x, *parameters, float(eps), backends.resolve(backend, x, OP))
