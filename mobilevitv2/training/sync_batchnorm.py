"""BatchNorm statistics over the global batch, on any process-group backend.

With several processes each one sees a slice of the batch; plain BatchNorm then normalises each slice by its
own statistics, and the run no longer computes what one process with the whole batch computes. PyTorch's
``SyncBatchNorm`` fixes that on GPUs only (it raises on CPU tensors); on GPUs we use it. This module does the
same with a differentiable all-reduce of the per-channel sums (``torch.distributed.nn.functional``), so gloo
runs on CPUs train the same model as one process. Same parameters and buffers as ``nn.BatchNorm2d``, so the
state dict is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = (0, 2, 3)
        local = torch.stack([
            x.sum(dims, dtype=torch.float32),
            (x.float() * x.float()).sum(dims),
            torch.full((x.shape[1],), x.numel() / x.shape[1], dtype=torch.float32, device=x.device),
        ])  # fmt: skip
        total = all_reduce(local)  # sums over the ranks; its backward all-reduces the gradients
        count = total[2, 0]
        mean = total[0] / count
        var = (total[1] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        shape = (1, -1, 1, 1)
        y = (x.float() - mean.view(shape)) * scale.view(shape)
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

