"""Fused kernels for MobileViTV2: separable self-attention, unfold/fold patching, the inverted residual and
the transformer layer (and its attention module alone).

Every op is a torch custom op in the ``mobilevitv2`` namespace (fake kernel and autograd included), with
three interchangeable backends: ``reference`` (pure PyTorch, the oracle, runs anywhere), ``triton`` and
``cuda`` (a JIT-built extension). ``backend="auto"`` picks the fastest one available for the input.
Exceptions: ``inverted_residual``, ``transformer_layer`` and ``linear_self_attention`` are inference-only
(no derivative) and have no ``cuda`` kernel.
"""

from mobilevitv2_kernels import reference
from mobilevitv2_kernels.backends import BACKEND_NAMES, BackendUnavailableError, KernelCheckError, available_backends
from mobilevitv2_kernels.folding import fold_batchnorm
from mobilevitv2_kernels.inverted_residual import inverted_residual
from mobilevitv2_kernels.linear_self_attention import linear_self_attention
from mobilevitv2_kernels.patching import fold, unfold
from mobilevitv2_kernels.separable_attention import separable_attention
from mobilevitv2_kernels.transformer_layer import transformer_layer
from mobilevitv2_kernels.weights import AttentionWeights, InvertedResidualWeights, TransformerLayerWeights

__all__ = [
    "AttentionWeights",
    "InvertedResidualWeights",
    "TransformerLayerWeights",
    "BACKEND_NAMES",
    "BackendUnavailableError",
    "KernelCheckError",
    "available_backends",
    "fold",
    "fold_batchnorm",
    "inverted_residual",
    "linear_self_attention",
    "reference",
    "separable_attention",
    "transformer_layer",
    "unfold",
]
