"""MobileViTV2 configuration: the architecture as data.

Field names and defaults are those of transformers' ``MobileViTV2Config`` (model_type ``"mobilevitv2"``),
so a transformers ``config.json`` reads into this class and the file it writes reads back into
transformers. These fields are this package's own:

* ``non_divisible_patching``: what a MobileViTV2 block does when its feature map is not a multiple of the
  2x2 patch (a 224x224 input gives a 7x7 stage-5 map). ``"zero_fill"`` (default) reproduces transformers:
  unfold drops the last row/column and fold writes zeros there. ``"resize"`` reproduces ml-cvnets and timm:
  the block input is bilinearly resized (align_corners=True) up to the next multiple of the patch, and the
  block output keeps that larger size.
* ``dilate_local_conv``: under output stride 8/16, ml-cvnets and timm dilate each block's local depthwise
  3x3 conv like the rest of the stage; transformers does not (``False``, default).
* ``attn_implementation``: which implementation runs the blocks' patching and attention: ``"eager"``
  (reference PyTorch), ``"triton"``, ``"cuda"`` or ``"auto"`` (fastest available for the device the model
  runs on). A runtime choice, so it is not written to ``config.json``.
* ``conv_implementation``: how the MobileNetV2 inverted-residual blocks (and the MobileViTV2 blocks' local
  depthwise 3x3 + 1x1 convs) run at inference: ``"eager"``
  (default: conv, BatchNorm and SiLU modules), ``"triton"`` (the fused ``mobilevitv2::inverted_residual``
  op, BatchNorm folded into the convs) or ``"auto"`` (the fused op on CUDA inputs, eager elsewhere). The
  fused op is inference-only: in training mode, or whenever a gradient is needed, the blocks run eagerly.
  A runtime choice like ``attn_implementation``, not written to ``config.json``.
* ``transformer_implementation``: how the MobileViTV2 blocks' transformer layers run at inference:
  ``"eager"`` (default: the GroupNorm, attention and FFN modules, the attention as ``attn_implementation``
  says), ``"triton"`` (the fused ``mobilevitv2::transformer_layer`` op: one op per layer, the keys never
  formed) or ``"auto"`` (the fused op on CUDA inputs, eager elsewhere). Inference-only like
  ``conv_implementation``, and a runtime choice, not written to ``config.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

CONFIG_NAME = "config.json"
MODEL_TYPE = "mobilevitv2"
WIDTH_PRESETS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
ATTN_IMPLEMENTATIONS = ("auto", "eager", "triton", "cuda")
# The inference-only fusions (conv_implementation, transformer_implementation) take these values.
FUSED_IMPLEMENTATIONS = ("eager", "triton", "auto")
RUNTIME_OPTIONS = ("attn_implementation", "conv_implementation", "transformer_implementation")
NON_DIVISIBLE_PATCHING = ("zero_fill", "resize")
# Keys of a transformers config that describe the file rather than the model; accepted and dropped.
_IGNORED_KEYS = {
    "mlp_ratio",  # written by the first transformers conversions; unused by the model
    "transformers_version",
    "_name_or_path",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "output_attentions",
    "dtype",
    "torch_dtype",
    "_attn_implementation_autoset",
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), never dropping
    below 90% of ``value`` (MobileNet's channel-rounding rule)."""
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


def clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


@dataclass
class MobileViTV2Config:
    num_channels: int = 3
    image_size: int = 256
    patch_size: int = 2
    expand_ratio: float = 2.0
    hidden_act: str = "swish"
    conv_kernel_size: int = 3
    output_stride: int = 32
    classifier_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    aspp_out_channels: int = 512
    atrous_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    aspp_dropout_prob: float = 0.1
    semantic_loss_ignore_index: int = 255
    n_attn_blocks: list[int] = field(default_factory=lambda: [2, 4, 3])
    base_attn_unit_dims: list[int] = field(default_factory=lambda: [128, 192, 256])
    width_multiplier: float = 1.0
    ffn_multiplier: int = 2
    attn_dropout: float = 0.0
    ffn_dropout: float = 0.0
    # PretrainedConfig fields that the heads and outputs use.
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    output_hidden_states: bool = False
    return_dict: bool = True
    architectures: list[str] | None = None
    # This package's own options (see the module docstring).
    non_divisible_patching: str = "zero_fill"
    dilate_local_conv: bool = False
    attn_implementation: str = "auto"
    conv_implementation: str = "eager"
    transformer_implementation: str = "eager"
    # Unknown keys read from a config.json, kept so that saving writes them back.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            if self.num_labels is not None and self.num_labels != len(self.id2label):
                raise ValueError(f"num_labels={self.num_labels} but id2label has {len(self.id2label)} entries")
        else:
            n = 2 if self.num_labels is None else self.num_labels
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.num_labels = len(self.id2label)
        if self.label2id is None or len(self.label2id) != self.num_labels:
            self.label2id = {name: i for i, name in self.id2label.items()}
        self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
        self.atrous_rates = list(self.atrous_rates)
        self.n_attn_blocks = list(self.n_attn_blocks)
        self.base_attn_unit_dims = list(self.base_attn_unit_dims)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value the model cannot be built with."""
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        if len(self.atrous_rates) != 3:
            raise ValueError(f"atrous_rates needs exactly 3 values, got {self.atrous_rates}")
        if len(self.n_attn_blocks) != 3 or len(self.base_attn_unit_dims) != 3:
            raise ValueError("n_attn_blocks and base_attn_unit_dims need one value for each of stages 3, 4, 5")
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {self.width_multiplier}")
        if self.patch_size < 1 or self.num_channels < 1:
            raise ValueError(f"patch_size and num_channels must be positive ({self.patch_size}, {self.num_channels})")
        if self.non_divisible_patching not in NON_DIVISIBLE_PATCHING:
            raise ValueError(
                f"non_divisible_patching must be one of {NON_DIVISIBLE_PATCHING}, got {self.non_divisible_patching!r}"
            )
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {self.attn_implementation!r}"
            )
        for option in ("conv_implementation", "transformer_implementation"):
            if getattr(self, option) not in FUSED_IMPLEMENTATIONS:
                raise ValueError(f"{option} must be one of {FUSED_IMPLEMENTATIONS}, got {getattr(self, option)!r}")

    # ----- derived widths (spec section 1.3) -------------------------------------------------------------
    @property
    def stage_channels(self) -> tuple[int, int, int, int, int, int]:
        """(C0 stem, C1..C5 stage outputs)."""
        a = self.width_multiplier
        c0 = make_divisible(clip(32 * a, 16, 64), 8, min_value=16)
        c1 = make_divisible(64 * a, 16)
        return (c0, c1) + tuple(make_divisible(w * a, 8) for w in (128, 256, 384, 512))

    @property
    def attn_dims(self) -> tuple[int, int, int]:
        return tuple(make_divisible(d * self.width_multiplier, 8) for d in self.base_attn_unit_dims)

    @property
    def hidden_size(self) -> int:
        """Channels of ``last_hidden_state`` (C5)."""
        return self.stage_channels[-1]

    # ----- presets -----------------------------------------------------------------------------------------
    @classmethod
    def from_width(cls, width_multiplier: float, **kwargs: Any) -> "MobileViTV2Config":
        """The published architecture at one of the widths 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0."""
        if width_multiplier not in WIDTH_PRESETS:
            raise ValueError(f"no preset for width {width_multiplier}; presets: {WIDTH_PRESETS}")
        return cls(width_multiplier=width_multiplier, **kwargs)

    # ----- serialisation -----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "MobileViTV2Config":
        """Build from a transformers-style dict; tolerant of old hub configs (missing architecture keys take
        the defaults, ``mlp_ratio`` is ignored, ``MobileViTv2...`` class spellings are accepted)."""
        if "num_labels" in overrides and "id2label" not in overrides:
            # An explicit num_labels replaces the file's labels (transformers regenerates LABEL_i names);
            # otherwise the file's id2label would win below and the override would be silently dropped.
            data = {k: v for k, v in data.items() if k not in ("id2label", "label2id")}
        data = {**data, **overrides}
        model_type = data.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config has model_type {model_type!r}, expected {MODEL_TYPE!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in _IGNORED_KEYS}
        extra.update(data.get("extra", {}) or {})
        if known.get("id2label") is not None and "num_labels" in known and known["num_labels"] != len(known["id2label"]):
            known.pop("num_labels")  # id2label wins, as in transformers
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """A transformers-compatible dict (``id2label`` keys as strings; the runtime choices
        :data:`RUNTIME_OPTIONS` omitted)."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for option in RUNTIME_OPTIONS:
            data.pop(option)
        extra = data.pop("extra")
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        data["model_type"] = MODEL_TYPE
        if data["architectures"] is None:
            data.pop("architectures")
        return {**extra, **data}

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "MobileViTV2Config":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, **overrides)

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> "MobileViTV2Config":
        """Read ``config.json`` from a directory (or a file path)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} at {path}")
        return cls.from_json_file(path, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, CONFIG_NAME))
