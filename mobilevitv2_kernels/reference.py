"""Pure-PyTorch reference implementations: the single oracle for every kernel.

Every backend (``reference``, ``triton``, ``cuda``) implements the same four functions with the same
contract; the registered ops in :mod:`mobilevitv2_kernels.ops` dispatch to one of them. This module is also
the eager path of the model, so it computes exactly what Hugging Face transformers computes (the same
operations in the same order), which keeps the eager model bit-compatible with it.

Layout conventions (transformers' MobileViTV2):

* ``qkv``: (B, 1 + 2d, P, N), channels ordered [query (1), key (d), value (d)];
  P = pixels inside one patch (row-major), N = patches (row-major over the patch grid).
* ``unfold``: (B, C, H, W) -> (B, C, P, N) with pixel (hi*ph + i, wi*pw + j) at p = i*pw + j,
  n = hi*(W // pw) + wi. Rows/columns beyond a multiple of the patch are dropped.
* ``fold``: the adjoint of ``unfold``: (B, C, P, N) -> (B, C, H, W), zeros where ``unfold`` dropped pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def separable_attention_forward(qkv: torch.Tensor) -> torch.Tensor:
    """ReLU(value) * sum_N(key * softmax_N(query)), shape (B, d, P, N). Same dtype as ``qkv``."""
    d = (qkv.shape[1] - 1) // 2
    query, key, value = torch.split(qkv, [1, d, d], dim=1)
    scores = torch.softmax(query, dim=-1)  # (B, 1, P, N)
    context = torch.sum(key * scores, dim=-1, keepdim=True)  # (B, d, P, 1)
    return F.relu(value) * context.expand_as(value)


def separable_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`separable_attention_forward` with respect to ``qkv``, computed in fp32 (fp64 for fp64).

    With s = softmax_N(q), c = sum_N k*s, out = relu(v)*c:
      dv = g * c * [v > 0];  dc = sum_N g*relu(v);  dk = dc * s;
      ds = sum_d dc*k;       dq = s * (ds - sum_N ds*s).
    """
    d = (qkv.shape[1] - 1) // 2
    compute = torch.promote_types(qkv.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
    q, k, v = torch.split(qkv.to(compute), [1, d, d], dim=1)
    g = grad_out.to(compute)
    s = torch.softmax(q, dim=-1)  # (B, 1, P, N)
    context = torch.sum(k * s, dim=-1, keepdim=True)  # (B, d, P, 1)
    relu_v = F.relu(v)
    grad_v = g * context * (v > 0)
    grad_context = torch.sum(g * relu_v, dim=-1, keepdim=True)  # (B, d, P, 1)
    grad_k = grad_context * s
    grad_s = torch.sum(grad_context * k, dim=1, keepdim=True)  # (B, 1, P, N)
    grad_q = s * (grad_s - torch.sum(grad_s * s, dim=-1, keepdim=True))
    return torch.cat([grad_q, grad_k, grad_v], dim=1).to(qkv.dtype)


def unfold_forward(x: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, ph*pw, (H//ph)*(W//pw)), exactly ``F.unfold`` + reshape (copy-free view math)."""
    B, C, H, W = x.shape
    nh, nw = H // patch_h, W // patch_w
    x = x[:, :, : nh * patch_h, : nw * patch_w]
    patches = x.reshape(B, C, nh, patch_h, nw, patch_w).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(B, C, patch_h * patch_w, nh * nw)


def fold_forward(patches: torch.Tensor, height: int, width: int, patch_h: int, patch_w: int) -> torch.Tensor:
    """(B, C, ph*pw, N) -> (B, C, height, width), exactly ``F.fold``: zeros where unfold dropped pixels."""
    B, C, P, N = patches.shape
    nh, nw = height // patch_h, width // patch_w
    grid = patches.reshape(B, C, patch_h, patch_w, nh, nw).permute(0, 1, 4, 2, 5, 3)
    grid = grid.reshape(B, C, nh * patch_h, nw * patch_w)
    if nh * patch_h == height and nw * patch_w == width:
        return grid.contiguous()
    return F.pad(grid, (0, width - nw * patch_w, 0, height - nh * patch_h))
