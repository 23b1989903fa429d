"""The fused attention-module op (inference only): schema, input checks, fake kernel, dispatch to a backend.

``mobilevitv2::linear_self_attention`` is MobileViTV2's separable self-attention with its two 1x1
projections on (B, d, P, N) patches, ``out_proj(ReLU(v) * sum_n softmax_n(q) k)`` with ``[q; k; v] =
qkv_proj(x)``: the attention alone, which the model runs inside ``transformer_layer``, here as the unit the
benchmarks compare with multi-head attention. Inference only, without a CUDA-extension kernel:
docs/design.md, "Inference-only ops".
"""

from __future__ import annotations

import torch

from mobilevitv2_kernels import backends
from mobilevitv2_kernels.common import FLOAT_DTYPES
from mobilevitv2_kernels.inference_only import register_no_derivative
from mobilevitv2_kernels.weights import AttentionWeights, schema_arguments, split

OP = "linear_self_attention"


def check_inputs(x: torch.Tensor, weights: AttentionWeights) -> None:
    """Validate the op's arguments; the output has ``x``'s shape."""
    if x.dim() != 4:
        raise ValueError(f"linear_self_attention expects x of shape (B, d, P, N), got shape {tuple(x.shape)}")
    d = x.shape[1]
    expected = {"w_qkv": (1 + 2 * d, d), "b_qkv": (1 + 2 * d,), "w_out": (d, d), "b_out": (d,)}
    for name, t in {"x": x, **weights._asdict()}.items():
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"linear_self_attention: {name} must be floating point (float32/16, bfloat16), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"linear_self_attention: {name} is on {t.device} but x is on {x.device}")
        if name in expected and tuple(t.shape) != expected[name]:
            raise ValueError(f"linear_self_attention: {name} must have shape {expected[name]} for d={d}, got {tuple(t.shape)}")


@torch.library.custom_op(
    "mobilevitv2::linear_self_attention",
    mutates_args=(),
    schema=f"(Tensor x, {schema_arguments(AttentionWeights)}, str backend) -> Tensor",
)
def _linear_self_attention(x: torch.Tensor, *args) -> torch.Tensor:
    weights, backend = AttentionWeights(*args[:-1]), args[-1]
    check_inputs(x, weights)
    if not backends.supports(backend, OP):  # a direct torch.ops call with backend="cuda"
        raise backends.BackendUnavailableError(f"the {backend!r} backend has no {OP} kernel")
    if x.numel() == 0:
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    out = backends.implementation(backend).linear_self_attention_forward(x, weights)
    return backends.as_new_contiguous(out, x)


@_linear_self_attention.register_fake
def _(x, *args):
    check_inputs(x, AttentionWeights(*args[:-1]))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


register_no_derivative(_linear_self_attention, uses="training runs the attention module's own layers")


def linear_self_attention(x: torch.Tensor, *weights, backend: str = "auto") -> torch.Tensor:
    """Separable self-attention with its projections, for inference, fused.

    Args:
        x: (B, d, P, N) patches, float32/float16/bfloat16 (float64 on the reference backend), any strides.
        weights: an :class:`~mobilevitv2_kernels.weights.AttentionWeights` (or its 4 tensors in order): the
            qkv projection (1 + 2d, d) with channels [query, key (d), value (d)] and the output projection
            (d, d), each with its bias.
        backend: ``"auto"`` (Triton on CUDA, the reference elsewhere), ``"reference"`` or ``"triton"``;
            ``"cuda"`` has no kernel for this op and raises ``BackendUnavailableError``.

    Returns:
        (B, d, P, N) contiguous, ``x``'s dtype. Not differentiable: raises if grad mode is on and an input
        requires grad.
    """
    weights, (backend,) = split(AttentionWeights, weights, [backend])
    check_inputs(x, weights)
    return torch.ops.mobilevitv2.linear_self_attention(x, *weights, backends.resolve(backend, x, OP))
