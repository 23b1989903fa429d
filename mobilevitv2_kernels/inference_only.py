"""The autograd registration shared by the inference-only ops (``inverted_residual``, ``transformer_layer``,
``linear_self_attention``): no derivative, and a clear error at call time, not later in ``backward``,
whenever autograd would need one (grad mode on and an input that requires grad)."""

from __future__ import annotations

import torch


def register_no_derivative(op: torch.library.CustomOpDef, uses: str) -> None:
    """Make ``op`` refuse autograd with a message naming it; ``uses`` says how the model avoids it."""
    name = op._qualname  # e.g. "mobilevitv2::transformer_layer"

    def refuse(ctx, inputs, output):
        raise RuntimeError(
            f"{name} is inference-only and has no derivative: call it under torch.no_grad()/"
            f"torch.inference_mode() or with inputs that do not require grad ({uses})"
        )

    def no_backward(ctx, grad):  # never reached: refuse raises first
        raise RuntimeError(f"{name} has no backward")

    op.register_autograd(no_backward, setup_context=refuse)
