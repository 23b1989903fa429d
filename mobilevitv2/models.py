"""MobileViTV2 backbone and its classification and DeepLabV3 segmentation models.

Same module tree, state-dict keys, outputs and losses as transformers' ``modeling_mobilevitv2``. Each part
with fused kernels (the blocks' attention and patching, the convs, the transformer layers) runs in reference
PyTorch or through the kernels, as :meth:`MobileViTV2PreTrainedModel.set_implementation` chooses
(:mod:`mobilevitv2.implementation`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilevitv2 import implementation, loading
from mobilevitv2.blocks import MobileViTV2Layer
from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.heads import MobileViTV2DeepLabV3
from mobilevitv2.layers import MobileViTV2ConvLayer, MobileViTV2MobileNetLayer
from mobilevitv2.outputs import (
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
    SemanticSegmenterOutput,
)


class MobileViTV2PreTrainedModel(nn.Module):
    """Shared plumbing: weight initialisation, the attention-implementation flag, checkpoint I/O."""

    base_model_prefix = "mobilevitv2"
    main_input_name = "pixel_values"

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__()
        self.config = config

    def post_init(self) -> None:
        self.apply(self._init_weights)
        choices = implementation.resolve(**getattr(self.config, "_implementation_choices", {}))
        self.set_implementation(check=False, **choices)

    def _init_weights(self, module: nn.Module) -> None:
        """Training-from-scratch initialisation: He-normal convs, unit norms, small classifier."""
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ----- implementation choices ----------------------------------------------------------------------------
    def set_implementation(
        self,
        preset: str | None = None,
        *,
        attention: str | None = None,
        conv: str | None = None,
        transformer: str | None = None,
        check: bool = True,
    ) -> "MobileViTV2PreTrainedModel":
        """Choose how the model runs. ``preset``: "fused" (every part takes its fused kernels where they are
        faster on the input's device, the reference elsewhere) or "reference" (pure PyTorch, transformers'
        exact arithmetic). Each part can also be set alone, for experts and benchmarks:

        * ``attention``: the blocks' patching and separable attention: "reference", "triton", "cuda" or
          "auto"; differentiable, so training uses it too;
        * ``conv``: the inverted residuals and the blocks' local convs, fused with BatchNorm folded at every
          call: "reference", "triton" or "auto"; inference only (training takes the modules);
        * ``transformer``: each transformer layer as one op: "reference", "triton" or "auto"; inference only.

        The choice is validated now (a backend that cannot run here raises an error naming what can) and
        stored on every module that uses it; ``forward`` reads nothing else. Returns the model."""
        choices = implementation.resolve(preset, self.implementation, attention=attention, conv=conv,
                                         transformer=transformer)  # fmt: skip
        if check:
            device = next(self.parameters()).device
            for part, name in choices.items():
                implementation.check_available(part, name, device if device.type == "cuda" else None)
        for module in self.modules():
            for part, name in choices.items():
                attribute = implementation.PARTS[part].attribute
                if hasattr(type(module), attribute):
                    setattr(module, attribute, None if name == implementation.REFERENCE else name)
        return self

    @property
    def implementation(self) -> dict[str, str]:
        """The choice of every part, {"attention": ..., "conv": ..., "transformer": ...}, read from the
        modules that store it (so it is right whichever model or backbone it was set through)."""
        choices = implementation.resolve()
        for part, spec in implementation.PARTS.items():
            module = next((m for m in self.modules() if hasattr(type(m), spec.attribute)), None)
            if module is not None:
                choices[part] = getattr(module, spec.attribute) or implementation.REFERENCE
        return choices

    # The per-part setters and properties by their earlier names (the same choices; "eager" = "reference").
    def set_attn_implementation(self, name: str, check: bool = True) -> "MobileViTV2PreTrainedModel":
        """``set_implementation(attention=name)``."""
        return self.set_implementation(attention=name, check=check)

    def set_conv_implementation(self, name: str, check: bool = True) -> "MobileViTV2PreTrainedModel":
        """``set_implementation(conv=name)``."""
        return self.set_implementation(conv=name, check=check)

    def set_transformer_implementation(self, name: str, check: bool = True) -> "MobileViTV2PreTrainedModel":
        """``set_implementation(transformer=name)``."""
        return self.set_implementation(transformer=name, check=check)

    @property
    def attn_implementation(self) -> str:
        return self.implementation["attention"]

    @property
    def conv_implementation(self) -> str:
        return self.implementation["conv"]

    @property
    def transformer_implementation(self) -> str:
        return self.implementation["transformer"]

    # ----- checkpoints -------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ):
        """Load a transformers-format directory (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``) or a Hub id (needs ``huggingface_hub``). ``config_overrides`` set config
        fields (``num_labels=10`` with ``strict=False``, ...); ``num_channels`` adapts the stem
        (:func:`mobilevitv2.loading.adapt_stem_channels`). ``implementation`` (a preset, "fused" or
        "reference") and the per-part options ``attn_implementation``, ``conv_implementation`` and
        ``transformer_implementation`` choose how the model runs (:meth:`set_implementation`); they are
        not saved.
        Every key must fit unless ``strict=False``; errors name the missing, unexpected or mis-shaped keys."""
        directory = loading.resolve_directory(path_or_id, revision=revision, cache_dir=cache_dir)
        preset = config_overrides.pop("implementation", None)
        parts = {spec.name: config_overrides.pop(option, None) for option, spec in implementation.OPTIONS.items()}
        config = MobileViTV2Config.from_pretrained(directory, **config_overrides)
        model = cls(config)
        state_dict = loading.read_state_dict(directory)
        if "num_channels" in config_overrides:  # e.g. RGB weights for RGB + depth inputs
            state_dict = loading.adapt_stem_channels(state_dict, config.num_channels)
        state_dict = loading.adapt_prefix(state_dict, model, cls.base_model_prefix)
        loading.load_state_dict_checked(model, state_dict, strict=strict, source=str(path_or_id))
        model.eval()
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        if preset is not None or any(value is not None for value in parts.values()):
            model.set_implementation(preset, **parts)
        return model

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write a transformers-format directory that transformers' ``from_pretrained`` loads strictly."""
        self.config.architectures = [type(self).__name__]
        loading.save_directory(self, self.config.save_pretrained, directory, safe_serialization)

    # ----- input checks ------------------------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be 4-D (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a floating-point tensor (e.g. float32 in [0, 1]), got {pixel_values.dtype}"
            )
        channels = pixel_values.shape[1]
        if channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {self.config.num_channels} "
                f"(config.num_channels); shape {tuple(pixel_values.shape)}"
            )


class MobileViTV2Encoder(nn.Module):
    """Stages 1-5 (``layer.0`` .. ``layer.4``); stages 4/5 trade stride for dilation under OS 16/8."""

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__()
        c0, c1, c2, c3, c4, c5 = config.stage_channels
        d3, d4, d5 = config.attn_dims
        n3, n4, n5 = config.n_attn_blocks
        dilation4 = 2 if config.output_stride == 8 else 1
        dilation5 = dilation4 * 2 if config.output_stride in (8, 16) else 1
        self.layer = nn.ModuleList(
            [
                MobileViTV2MobileNetLayer(config, c0, c1, stride=1, num_stages=1),
                MobileViTV2MobileNetLayer(config, c1, c2, stride=2, num_stages=2),
                MobileViTV2Layer(config, c2, c3, d3, n3),
                MobileViTV2Layer(config, c3, c4, d4, n4, dilation=dilation4),
                MobileViTV2Layer(config, c4, c5, d5, n5, dilation=dilation5),
            ]
        )

    def forward(self, x: torch.Tensor, num_stages: int | None = None) -> list[torch.Tensor]:
        """(B, C0, H/2, W/2) -> the outputs of the first ``num_stages`` stages (default: all five)."""
        hidden_states = []
        for stage in self.layer[:num_stages]:
            x = stage(x)
            hidden_states.append(x)
        return hidden_states


def _down(size: int, stride: int) -> int:
    return (size + stride - 1) // stride  # stride-2 convs with padding 1 give ceil(size / 2)


class MobileViTV2Model(MobileViTV2PreTrainedModel):
    """The backbone. ``expand_output=False`` (used by the segmentation model) skips the pooled output."""

    def __init__(self, config: MobileViTV2Config, expand_output: bool = True) -> None:
        super().__init__(config)
        self.expand_output = expand_output
        self.conv_stem = MobileViTV2ConvLayer(config, config.num_channels, config.stage_channels[0], 3, stride=2)
        self.encoder = MobileViTV2Encoder(config)
        self.post_init()

    def block_map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial sizes of the feature maps that the three MobileViTV2 blocks unfold, for an input size."""
        strides = [2, 1, 2, 2, 2, 2]  # stem, stage 1, stage 2, stages 3-5 (down-sampling IRs)
        if self.config.output_stride <= 16:
            strides[5] = 1
        if self.config.output_stride == 8:
            strides[4] = 1
        sizes, h, w = [], height, width
        for i, stride in enumerate(strides):
            h, w = _down(h, stride), _down(w, stride)
            if i >= 3:
                if self.config.non_divisible_patching == "resize":
                    p = self.config.patch_size
                    h, w = _down(h, p) * p, _down(w, p) * p
                sizes.append((h, w))
        return sizes

    def _check_size(self, height: int, width: int) -> None:
        p = self.config.patch_size
        for stage, (h, w) in zip((3, 4, 5), self.block_map_sizes(height, width)):
            if h < p or w < p:
                smallest = next(s for s in range(1, 4097) if min(min(hw) for hw in self.block_map_sizes(s, s)) >= p)
                raise ValueError(
                    f"input of {height}x{width} is too small: the stage-{stage} feature map would be {h}x{w}, "
                    f"smaller than the {p}x{p} patch; inputs need at least {smallest}x{smallest} pixels "
                    f"(output_stride {self.config.output_stride})"
                )

    # ----- multi-scale features (like timm's features_only) --------------------------------------------------
    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry per stage (``encoder.layer.i``, transformers' ``hidden_states[i]``): its index, module,
        channels (``num_chs``) and ``reduction``, the input-to-feature stride (2, 4, 8, 16, 32, capped by
        ``output_stride``: 16 and 16 for the last two stages at OS 16)."""
        channels = self.config.stage_channels[1:]
        return [
            {"stage": i, "module": f"encoder.layer.{i}", "num_chs": c, "reduction": min(2 ** (i + 1), self.config.output_stride)}
            for i, c in enumerate(channels)
        ]

    def forward_features(self, pixel_values: torch.Tensor, stages: tuple[int, ...] = (0, 1, 2, 3, 4)) -> list[torch.Tensor]:
        """The feature maps of ``stages`` (indices into :attr:`feature_info`), in that order; stages after the
        last one asked for are not run. Each map is (B, num_chs, ~H/reduction, ~W/reduction)."""
        stages = tuple(stages)
        if not stages or any(not 0 <= s < len(self.encoder.layer) for s in stages):
            raise ValueError(f"stages must be a non-empty selection of 0..{len(self.encoder.layer) - 1}, got {stages}")
        self._check_pixel_values(pixel_values)
        self._check_size(pixel_values.shape[2], pixel_values.shape[3])
        x = self.conv_stem(pixel_values)  # (B, C0, H/2, W/2)
        hidden_states = self.encoder(x, num_stages=max(stages) + 1)
        return [hidden_states[s] for s in stages]

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        """pixel_values (B, num_channels, H, W) -> last_hidden_state (B, C5, H/OS, W/OS), pooled (B, C5)."""
        self._check_pixel_values(pixel_values)
        self._check_size(pixel_values.shape[2], pixel_values.shape[3])
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict

        x = self.conv_stem(pixel_values)  # (B, C0, H/2, W/2)
        hidden_states = self.encoder(x)
        last_hidden_state = hidden_states[-1]
        pooled = torch.mean(last_hidden_state, dim=[-2, -1]) if self.expand_output else None
        all_hidden = tuple(hidden_states) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, all_hidden) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state, pooled, all_hidden)


def classification_loss(config: MobileViTV2Config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' rules: regression for one label, single-label CE for integer labels, else multi-label."""
    labels = labels.to(logits.device)
    problem_type = config.problem_type
    if problem_type is None:
        if config.num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ValueError(f"unknown problem_type {problem_type!r}")


class MobileViTV2ForImageClassification(MobileViTV2PreTrainedModel):
    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mobilevitv2 = MobileViTV2Model(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.mobilevitv2(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.classifier(outputs.pooler_output)  # (B, num_labels)
        loss = classification_loss(self.config, logits, labels) if labels is not None else None
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states) if v is not None)
        return ImageClassifierOutputWithNoAttention(loss, logits, outputs.hidden_states)


class MobileViTV2ForSemanticSegmentation(MobileViTV2PreTrainedModel):
    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mobilevitv2 = MobileViTV2Model(config, expand_output=False)
        self.segmentation_head = MobileViTV2DeepLabV3(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        """logits (B, num_labels, H/OS, W/OS); the loss upsamples them bilinearly to the label size."""
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None and self.config.num_labels == 1:
            raise ValueError("semantic segmentation needs num_labels > 1")
        outputs = self.mobilevitv2(pixel_values, output_hidden_states=True, return_dict=True)
        logits = self.segmentation_head(outputs.hidden_states[-1])
        loss = None
        if labels is not None:
            upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(upsampled, labels.to(logits.device), ignore_index=self.config.semantic_loss_ignore_index)
        hidden = outputs.hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden) if v is not None)
        return SemanticSegmenterOutput(loss, logits, hidden)
