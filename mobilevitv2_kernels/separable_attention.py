"""The separable-attention op: schema, input checks, fake kernel, autograd, dispatch to a backend.

``mobilevitv2::separable_attention(Tensor qkv, str backend) -> Tensor`` computes, for every (b, p),
``scores = softmax_N(query)``, ``context = sum_N key * scores`` and returns ``ReLU(value) * context``.
Its backward is the registered op ``mobilevitv2::separable_attention_backward``. Both are ``custom_op``s
whose one implementation dispatches to the backend named in the call (``reference``, ``triton`` or
``cuda``), so ``torch.compile(fullgraph=True)`` sees one opaque node and ``opcheck`` runs on the CPU too.
"""

from __future__ import annotations

import torch

from mobilevitv2_kernels import backends
from mobilevitv2_kernels.common import FLOAT_DTYPES



def check_qkv(qkv: torch.Tensor) -> int:
    """Validate a (B, 1+2d, P, N) qkv tensor and return d."""
    if qkv.dim() != 4:
        raise ValueError(
            f"separable_attention expects qkv of shape (B, 1+2d, P, N), got a {qkv.dim()}-D tensor "
            f"of shape {tuple(qkv.shape)}"
        )
    if qkv.dtype not in FLOAT_DTYPES:
        raise TypeError(f"separable_attention expects a floating-point qkv (float32/16, bfloat16), got {qkv.dtype}")
    channels = qkv.shape[1]
    if channels % 2 != 1:
        raise ValueError(
            f"separable_attention expects 1+2d channels (1 query, d keys, d values), got {channels} "
            f"channels in qkv of shape {tuple(qkv.shape)}"
        )
    return (channels - 1) // 2


def _output_shape(qkv: torch.Tensor) -> tuple[int, int, int, int]:
    B, C, P, N = qkv.shape
    return (B, (C - 1) // 2, P, N)


@torch.library.custom_op("mobilevitv2::separable_attention", mutates_args=())
def _separable_attention(qkv: torch.Tensor, backend: str) -> torch.Tensor:
    check_qkv(qkv)
    if qkv.numel() == 0 or _output_shape(qkv)[1] == 0:
        return qkv.new_zeros(_output_shape(qkv))
    return backends.as_new_contiguous(backends.implementation(backend).separable_attention_forward(qkv), qkv)


@_separable_attention.register_fake
def _(qkv: torch.Tensor, backend: str) -> torch.Tensor:
    check_qkv(qkv)
    return qkv.new_empty(_output_shape(qkv))


@torch.library.custom_op("mobilevitv2::separable_attention_backward", mutates_args=())
def _separable_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, backend: str) -> torch.Tensor:
    check_qkv(qkv)
    if grad_out.shape != _output_shape(qkv):
        raise ValueError(
            f"separable_attention_backward: grad_out has shape {tuple(grad_out.shape)}, "
            f"expected {_output_shape(qkv)} for qkv of shape {tuple(qkv.shape)}"
        )
    if grad_out.device != qkv.device:
        raise ValueError(f"grad_out is on {grad_out.device} but qkv is on {qkv.device}")
    if qkv.numel() == 0:
        return torch.zeros_like(qkv, memory_format=torch.contiguous_format)
    grad_qkv = backends.implementation(backend).separable_attention_backward(grad_out.to(qkv.dtype), qkv)
    return backends.as_new_contiguous(grad_qkv, qkv, grad_out)


@_separable_attention_backward.register_fake
def _(grad_out: torch.Tensor, qkv: torch.Tensor, backend: str) -> torch.Tensor:
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    qkv, backend = inputs
    ctx.save_for_backward(qkv)
    ctx.backend = backend


def _backward(ctx, grad_out):
    (qkv,) = ctx.saved_tensors
    return torch.ops.mobilevitv2.separable_attention_backward(grad_out, qkv, ctx.backend), None


_separable_attention.register_autograd(_backward, setup_context=_setup_context)


def separable_attention(qkv: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Fused separable self-attention core of MobileViTV2.

    Args:
        qkv: (B, 1+2d, P, N) float32/float16/bfloat16 (float64 on the reference backend), channels ordered
            [query (1), key (d), value (d)], the output of the block's ``qkv_proj`` 1x1 conv. Any strides
            are accepted; the kernels are fastest when N is the contiguous (innermost) dimension, which is
            the layout that ``unfold`` and a 1x1 conv produce.
        backend: ``"auto"`` (fastest available for the tensor's device), ``"reference"``, ``"triton"`` or
            ``"cuda"``. An explicit backend that cannot run here raises ``BackendUnavailableError``.

    Returns:
        (B, d, P, N) contiguous tensor of ``qkv``'s dtype: ``ReLU(value) * sum_N(key * softmax_N(query))``.
        The kernels accumulate in float32. Differentiable with respect to ``qkv``.
    """
    check_qkv(qkv)
    return torch.ops.mobilevitv2.separable_attention(qkv, backends.resolve(backend, qkv, "separable_attention"))
