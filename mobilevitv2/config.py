"""MobileViTV2 configuration: the architecture as data.

Field names and defaults are those of transformers' ``MobileViTV2Config`` (model_type ``"mobilevitv2"``), so
a transformers ``config.json`` reads into this class and the file it writes reads back into transformers.
Two fields are this package's own, for where transformers and ml-cvnets/timm disagree; the implementation
choices are not fields (docs/design.md, "Configuration and implementation choices").
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import InitVar, dataclass, field
from typing import Any

from mobilevitv2 import implementation

CONFIG_NAME = "config.json"
MODEL_TYPE = "mobilevitv2"
WIDTH_PRESETS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
# The implementation choices a config still accepts as keywords (never stored in it, never saved).
RUNTIME_OPTIONS = tuple(implementation.OPTIONS)
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
    *RUNTIME_OPTIONS,
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
    # This package's own options; the defaults reproduce transformers, the alternatives ml-cvnets and timm.
    # A feature map that is not a multiple of the patch (224x224 input: 7x7 at stage 5): "zero_fill" (unfold
    # drops the last row/column, fold writes zeros there) or "resize" (the block input resized bilinearly,
    # align_corners=True, up to the next multiple of the patch; the block output keeps that size).
    non_divisible_patching: str = "zero_fill"
    # Dilate each block's local depthwise 3x3 under output stride 8/16 like the rest of the stage.
    dilate_local_conv: bool = False
    # Accepted for compatibility and handed to the model built from this config; not fields.
    attn_implementation: InitVar[str | None] = None
    conv_implementation: InitVar[str | None] = None
    transformer_implementation: InitVar[str | None] = None
    # Unknown keys read from a config.json, kept so that saving writes them back.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(
        self, attn_implementation: str | None, conv_implementation: str | None, transformer_implementation: str | None
    ) -> None:
        given = {"attn_implementation": attn_implementation, "conv_implementation": conv_implementation,
                 "transformer_implementation": transformer_implementation}  # fmt: skip
        # The model built from this config applies these once; validated now so that a typo fails here.
        self._implementation_choices = {
            implementation.OPTIONS[option].name: implementation.normalize(implementation.OPTIONS[option].name, value)
            for option, value in given.items()
            if value is not None
        }
        if self._implementation_choices:
            implementation.warn_once(
                "config", "implementation choices are not part of MobileViTV2Config: pass them to from_pretrained "
                "or to model.set_implementation(); the model built from this config still applies them"
            )
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
        # Implementation choices passed by the caller reach the model (with the config's one warning); the
        # same keys in a file describe no architecture and are dropped (_IGNORED_KEYS).
        known.update({k: v for k, v in overrides.items() if k in RUNTIME_OPTIONS})
        extra = {k: v for k, v in data.items() if k not in names and k not in _IGNORED_KEYS}
        extra.update(data.get("extra", {}) or {})
        if known.get("id2label") is not None and "num_labels" in known and known["num_labels"] != len(known["id2label"]):
            known.pop("num_labels")  # id2label wins, as in transformers
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """A transformers-compatible dict (``id2label`` keys as strings)."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
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
