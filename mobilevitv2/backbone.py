"""MobileViTV2 as a multi-scale feature extractor for detection and segmentation heads (timm's
``features_only``): ``forward`` returns the feature maps of the chosen stages, ``feature_info`` their
channels and strides.

Stages are numbered like transformers' ``hidden_states``: 0..4 = ``encoder.layer.0..4``, strides 2, 4, 8,
16, 32 (capped by ``output_stride``); an FPN typically takes ``out_indices=(1, 2, 3, 4)``. The state-dict
keys are those of a bare ``MobileViTV2Model``, so any transformers-format checkpoint (classification or
segmentation; its head is dropped) loads into it. Inputs with other than 3 channels (RGB + depth, RGB +
NIR, ...): ``num_channels`` in the config, or ``from_pretrained(..., num_channels=4)``, which adapts a
3-channel stem (:func:`mobilevitv2.loading.adapt_stem_channels`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.models import MobileViTV2Model

ALL_STAGES = (0, 1, 2, 3, 4)


class MobileViTV2Backbone(MobileViTV2Model):
    """``forward(pixel_values)`` -> list of feature maps (B, num_chs, ~H/reduction, ~W/reduction), one per
    ``out_indices`` entry. ``feature_info`` describes them (timm's keys ``num_chs``, ``reduction``,
    ``module``, plus ``stage``)."""

    def __init__(self, config: MobileViTV2Config, out_indices: tuple[int, ...] = ALL_STAGES) -> None:
        super().__init__(config, expand_output=False)
        self.frozen = False
        self.out_indices = out_indices

    @property
    def out_indices(self) -> tuple[int, ...]:
        return self._out_indices

    @out_indices.setter
    def out_indices(self, indices: tuple[int, ...]) -> None:
        indices = tuple(indices)
        if not indices or any(i not in ALL_STAGES for i in indices):
            raise ValueError(f"out_indices must be a non-empty selection of {ALL_STAGES}, got {indices}")
        self._out_indices = indices

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        every_stage = super().feature_info
        return [every_stage[i] for i in self.out_indices]

    @property
    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self.feature_info]

    @property
    def reductions(self) -> list[int]:
        return [info["reduction"] for info in self.feature_info]

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_features(pixel_values, self.out_indices)

    def freeze(self, frozen: bool = True) -> "MobileViTV2Backbone":
        """A fixed feature extractor: no gradients, and BatchNorm statistics and dropout stay in inference
        mode even when an enclosing model is put in training mode."""
        self.frozen = frozen
        for p in self.parameters():
            p.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "MobileViTV2Backbone":
        super().train(mode and not self.frozen)
        self.training = mode  # what an enclosing model sees; the layers inside stay in eval while frozen
        return self

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, *, out_indices: tuple[int, ...] = ALL_STAGES, **kwargs: Any
    ) -> "MobileViTV2Backbone":
        """The backbone of any transformers-format checkpoint; see ``MobileViTV2Model.from_pretrained``."""
        model = super().from_pretrained(path_or_id, **kwargs)
        model.out_indices = out_indices
        return model


__all__ = ["MobileViTV2Backbone"]
