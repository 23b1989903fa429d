"""BatchNorm statistics over the global batch, on any process-group backend.

With several processes each one sees a slice of the batch; plain BatchNorm then normalises each slice by its
own statistics, and the run no longer computes what one process with the whole batch computes. PyTorch's
``SyncBatchNorm`` fixes that on GPUs only (it raises on CPU tensors); on GPUs we use it. This module does the
same with a differentiable all-reduce of the per-channel sums (:class:`AllReduceSum`), so gloo
runs on CPUs train the same model as one process. Same parameters and buffers as ``nn.BatchNorm2d``, so the
state dict is unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class AllReduceSum(torch.autograd.Function):
    """The sum over the ranks; the gradient of each rank's input is the sum of the ranks' output gradients
    (every rank's loss depends on every rank's contribution)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        xf = x.float()
        # Two passes, as one process computes it: the global mean, then the centred sum of squares (the
        # one-pass E[x^2] - mean^2 loses digits when the mean is large against the spread).
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        sums = AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        count = sums[-1]
        mean = sums[:-1] / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        shape = (1, -1, 1, 1)
        y = centred * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert(module: nn.Module, device_type: str) -> nn.Module:
    """``module`` with every BatchNorm2d synchronised across the process group: PyTorch's ``SyncBatchNorm``
    on CUDA, :class:`GlobalBatchNorm2d` elsewhere. Weights and buffers are kept (shared, not copied)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _replace(module)


def _replace(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        replaced = _replace(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module

