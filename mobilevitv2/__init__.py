"""MobileViTV2 for PyTorch: transformers-exact reference models with fused separable-attention kernels."""

from mobilevitv2.backbone import MobileViTV2Backbone
from mobilevitv2.config import WIDTH_PRESETS, MobileViTV2Config
from mobilevitv2.image_processing import MobileViTV2ImageProcessor
from mobilevitv2.loading import CheckpointError
from mobilevitv2.models import (
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    MobileViTV2PreTrainedModel,
)

__version__ = "0.1.0"

__all__ = [
    "WIDTH_PRESETS",
    "CheckpointError",
    "MobileViTV2Backbone",
    "MobileViTV2Config",
    "MobileViTV2ForImageClassification",
    "MobileViTV2ForSemanticSegmentation",
    "MobileViTV2ImageProcessor",
    "MobileViTV2Model",
    "MobileViTV2PreTrainedModel",
]
