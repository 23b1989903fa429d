"""ONNX export of the reference (eager) path at opset 17, with a dynamic batch and a fixed spatial size, its
BatchNorms folded and its consecutive linear maps composed (:func:`exportable_copy`).

The eager unfold/fold are reshape/permute/pad, so the graph needs no ``Col2Im`` (transformers' ``F.fold``
needs opset 18), and output sizes that transformers computes from the runtime shape are fixed at export, so
it has no data-dependent ``Resize`` (docs/design.md, "ONNX export"). Needs ``onnx`` to check the file and
``onnxruntime`` to run it (``pip install "mobilevitv2[onnx]"``).
"""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilevitv2.blocks import MobileViTV2Layer
from mobilevitv2.heads import MobileViTV2ASPPPooling
from mobilevitv2.inference_form import inference_form
from mobilevitv2.models import (
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    MobileViTV2PreTrainedModel,
)

OPSET = 17


class _BroadcastPooling(nn.Module):
    """The ASPP image-pooling branch with its output size fixed: pool, 1x1 conv, broadcast to (h, w)."""

    def __init__(self, branch: MobileViTV2ASPPPooling, size: tuple[int, int]) -> None:
        super().__init__()
        self.global_pool, self.conv_1x1, self.size = branch.global_pool, branch.conv_1x1, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1x1(self.global_pool(x)).expand(-1, -1, *self.size)


class _ResizeTo(nn.Module):
    """A block's down-sampling layer followed by the resize to a patch multiple, to a size fixed at export."""

    def __init__(self, downsampling_layer: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.downsampling_layer, self.size = downsampling_layer, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsampling_layer(x)
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=True)


class _TensorOutputs(nn.Module):
    """The model with plain tensor outputs, named by :func:`output_names`."""

    def __init__(self, model: MobileViTV2PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        if isinstance(self.model, (MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation)):
            return self.model(pixel_values, return_dict=False)[0]
        if hasattr(self.model, "out_indices"):  # MobileViTV2Backbone
            return tuple(self.model(pixel_values))
        return tuple(self.model(pixel_values, return_dict=False))


class TwoPassGroupNorm(nn.Module):
    """``nn.GroupNorm`` on (B, C, H, W) computed in two passes, the variance from the centred input, and each
    mean as a mean over (H, W) then over the group's channels. ExecuTorch 1.5's ``group_norm`` kernel takes the
    variance in one pass over the whole group: on activations whose mean is large against their spread it
    loses the variance to cancellation (measured on a (1, 64, 4, 256) input of std 2: max abs error 3.4e-4 at
    mean 10 and 1.7e-2 at mean 100, against PyTorch's 1e-6 and 9e-6; this module lowered the same way:
    3.8e-6 and 2.6e-5). A flat mean over all C*H*W values lost 4e-5 too, hence the two-stage means."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps = norm.num_groups, norm.eps
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"TwoPassGroupNorm takes (batch, channels, height, width), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        grouped = x.reshape(b, self.num_groups, c // self.num_groups, h, w)

        def group_mean(t: torch.Tensor) -> torch.Tensor:
            return t.mean(dim=(-2, -1), keepdim=True).mean(dim=-3, keepdim=True)

        centred = grouped - group_mean(grouped)
        y = (centred * torch.rsqrt(group_mean(centred * centred) + self.eps)).reshape(b, c, h, w)
        if self.weight is None:
            return y
        return y * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)


def with_two_pass_group_norms(model: nn.Module) -> nn.Module:
    """``model`` with each ``nn.GroupNorm`` replaced in place by a :class:`TwoPassGroupNorm` sharing its
    parameters; returns ``model``."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, TwoPassGroupNorm(child))
    return model


def _eager_copy(model):
    """A float32 CPU copy running the reference path only (no custom ops reach the exported graph)."""
    model = copy.deepcopy(model).float().cpu().eval()
    return model.set_implementation("reference", check=False)


def output_names(model: MobileViTV2PreTrainedModel) -> list[str]:
    if isinstance(model, (MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation)):
        return ["logits"]
    if hasattr(model, "out_indices"):
        return [f"stage{i}" for i in model.out_indices]
    if isinstance(model, MobileViTV2Model):
        return ["last_hidden_state", "pooler_output"] if model.expand_output else ["last_hidden_state"]
    raise TypeError(f"cannot export a {type(model).__name__}")


def exportable_copy(
    model: MobileViTV2PreTrainedModel, height: int, width: int, compose_linear: bool = True
) -> MobileViTV2PreTrainedModel:
    """A float32 CPU copy on the eager path whose run-time-sized resizes are fixed for ``height`` x ``width``;
    with ``compose_linear``, its BatchNorms folded and its consecutive linear maps composed
    (:func:`mobilevitv2.inference_form.compose_linear_maps`: the same outputs with fewer multiply-adds, 13.7%
    fewer for the width-1.0 classifier at 256x256; for the base model and the backbone, whose outputs are
    stage features, only the key projections move)."""
    model = inference_form(model) if compose_linear else _eager_copy(model)
    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out: sizes.__setitem__(mod, tuple(args[0].shape[-2:])))
        for m in model.modules()
        if isinstance(m, MobileViTV2ASPPPooling)
    ] + [
        m.downsampling_layer.register_forward_hook(lambda mod, args, out: sizes.__setitem__(mod, tuple(out.shape[-2:])))
        for m in model.modules()
        if isinstance(m, MobileViTV2Layer) and m.resize_to_patch_multiple
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.config.num_channels, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, MobileViTV2ASPPPooling):
                setattr(module, name, _BroadcastPooling(child, sizes[child]))
        if isinstance(module, MobileViTV2Layer) and module.resize_to_patch_multiple:
            (h, w), (ph, pw) = sizes[module.downsampling_layer], module.patch_size
            module.downsampling_layer = _ResizeTo(module.downsampling_layer, ((h + ph - 1) // ph * ph, (w + pw - 1) // pw * pw))
            module.resize_to_patch_multiple = False
    return model


def export_onnx(
    model: MobileViTV2PreTrainedModel,
    path: str | os.PathLike,
    height: int = 256,
    width: int = 256,
    opset: int = OPSET,
    dynamic_batch: bool = True,
) -> str:
    """Write ``model`` (any MobileViTV2 class) to ``path`` as ONNX; input ``pixel_values``
    (batch, num_channels, height, width), outputs named by :func:`output_names`. Returns the path."""
    path = os.fspath(path)
    names = output_names(model)
    wrapper = _TensorOutputs(exportable_copy(model, height, width)).eval()
    example = torch.zeros(1, model.config.num_channels, height, width)
    dynamic_axes = {name: {0: "batch"} for name in ["pixel_values", *names]} if dynamic_batch else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():  # tracing warns about the shape checks and that this exporter is the old one
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), path, opset_version=opset, input_names=["pixel_values"], output_names=names,
            dynamic_axes=dynamic_axes, dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    try:
        import onnx
    except ImportError:
        return path
    onnx.checker.check_model(path)
    return path


def onnx_op_types(path: str | os.PathLike) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(os.fspath(path)).graph.node}


def run_onnx(path: str | os.PathLike, pixel_values: torch.Tensor) -> list[np.ndarray]:
    """Run the exported model with onnxruntime on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError('running the ONNX model needs onnxruntime (pip install "mobilevitv2[onnx]")') from None
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixel_values.detach().float().cpu().numpy()})


def max_abs_difference(model: MobileViTV2PreTrainedModel, path: str | os.PathLike, pixel_values: torch.Tensor) -> float:
    """Largest |onnxruntime - PyTorch eager| over all outputs, in float32 on the CPU."""
    reference = _TensorOutputs(_eager_copy(model))
    with torch.no_grad():
        expected = reference(pixel_values.float().cpu())
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = run_onnx(path, pixel_values)
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
