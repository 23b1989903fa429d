"""The DeepLabV3 segmentation head (ASPP), with transformers' module names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobilevitv2.config import MobileViTV2Config
from mobilevitv2.layers import MobileViTV2ConvLayer


class MobileViTV2ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv + BN + ReLU, upsample back to the input size."""

    def __init__(self, config: MobileViTV2Config, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_1x1 = MobileViTV2ConvLayer(config, in_channels, out_channels, kernel_size=1, use_activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.conv_1x1(self.global_pool(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MobileViTV2ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and the pooling branch, concatenated and
    projected back to ``aspp_out_channels``."""

    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__()
        in_channels, out_channels = config.hidden_size, config.aspp_out_channels
        self.convs = nn.ModuleList(
            [MobileViTV2ConvLayer(config, in_channels, out_channels, kernel_size=1, use_activation="relu")]
            + [
                MobileViTV2ConvLayer(
                    config, in_channels, out_channels, kernel_size=3, dilation=rate, use_activation="relu"
                )
                for rate in config.atrous_rates
            ]
            + [MobileViTV2ASPPPooling(config, in_channels, out_channels)]
        )
        self.project = MobileViTV2ConvLayer(config, 5 * out_channels, out_channels, kernel_size=1, use_activation="relu")
        self.dropout = nn.Dropout(p=config.aspp_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = torch.cat([branch(x) for branch in self.convs], dim=1)
        return self.dropout(self.project(pyramid))


class MobileViTV2DeepLabV3(nn.Module):
    def __init__(self, config: MobileViTV2Config) -> None:
        super().__init__()
        self.aspp = MobileViTV2ASPP(config)
        self.dropout = nn.Dropout2d(config.classifier_dropout_prob)
        self.classifier = MobileViTV2ConvLayer(
            config,
            config.aspp_out_channels,
            config.num_labels,
            kernel_size=1,
            bias=True,
            use_normalization=False,
            use_activation=False,
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C5, H/OS, W/OS) features -> (B, num_labels, H/OS, W/OS) logits."""
        return self.classifier(self.dropout(self.aspp(features)))
