"""The ``triton`` backend: Triton kernels implementing :mod:`mobilevitv2_kernels.reference`'s functions.

Importing this package imports ``triton``; where that fails, :mod:`mobilevitv2_kernels.backends` reports the
backend as unavailable. Kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
"""

import triton  # noqa: F401  (an ImportError here marks the backend unavailable)

from mobilevitv2_kernels.triton_kernels.inverted_residual import inverted_residual_forward
from mobilevitv2_kernels.triton_kernels.patching import fold_forward, unfold_forward
from mobilevitv2_kernels.triton_kernels.separable_attention import (
    separable_attention_backward,
    separable_attention_forward,
)
from mobilevitv2_kernels.triton_kernels.transformer_layer import (
    linear_self_attention_forward,
    transformer_layer_forward,
)

__all__ = [
    "fold_forward",
    "inverted_residual_forward",
    "linear_self_attention_forward",
    "separable_attention_backward",
    "separable_attention_forward",
    "transformer_layer_forward",
    "unfold_forward",
]
