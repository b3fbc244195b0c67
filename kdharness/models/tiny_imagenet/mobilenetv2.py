"""Tiny-ImageNet MobileNetV2 of mdistiller (``mobilenetv2_tinyimagenet``, the DOT paper's student).

A full-width MobileNetV2 for 64x64 inputs, unlike the CIFAR ``MobileNetV2`` (half width).
Its layout is mdistiller's so that checkpoints load unchanged: a ``pre`` stem (a 1x1 conv
*with* padding 1, so 64x64 becomes 66x66, as there), ``stage1`` ... ``stage7`` of inverted
residual blocks (``residual.<i>``, biased convs, ReLU6), a 1x1 ``conv1`` to 1280 channels
and a 1x1-conv classifier ``conv2``.

Feature dict: ``feats`` = [stem, stage2, stage3, stage4, conv1] as mdistiller; the stage
outputs end in a linear projection, so ``preact_feats`` repeats ``feats`` (mdistiller has
no such key for this model); ``pooled_feat`` is ``[B, 1280]`` (mdistiller keeps ``[B, 1280, 1, 1]``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.models._common import FeatureHelpers, ModelOutput

# (blocks, in, out, stride, expansion) of stages 2-6; stage1 is (32 -> 16, t 1), stage7 (160 -> 320, t 6).
_STAGES = ((2, 16, 24, 2, 6), (3, 24, 32, 2, 6), (4, 32, 64, 2, 6), (3, 64, 96, 1, 6), (3, 96, 160, 1, 6))


class LinearBottleNeck(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear); identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, t: int = 6) -> None:
        super().__init__()
        hidden = in_channels * t
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)
        return out + x if self.shortcut else out


def _stage(blocks: int, in_channels: int, out_channels: int, stride: int, t: int) -> nn.Sequential:
    layers = [LinearBottleNeck(in_channels, out_channels, stride, t)]
    layers += [LinearBottleNeck(out_channels, out_channels, 1, t) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class MobileNetV2(FeatureHelpers, nn.Module):
    """MobileNetV2 1.0x for 64x64 inputs (mdistiller's Tiny-ImageNet student)."""

    def __init__(self, num_classes: int = 200) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pre = nn.Sequential(nn.Conv2d(3, 32, 1, padding=1), nn.BatchNorm2d(32), nn.ReLU6(inplace=True))
        self.stage1 = LinearBottleNeck(32, 16, 1, 1)
        for i, spec in enumerate(_STAGES, start=2):
            self.add_module(f"stage{i}", _stage(*spec))
        self.stage7 = LinearBottleNeck(160, 320, 1, 6)
        self.conv1 = nn.Sequential(nn.Conv2d(320, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        self.conv2 = nn.Conv2d(1280, num_classes, 1)
        # The widths of the five features (mdistiller defines no helpers for this model).
        self.stage_channels = [32, 24, 32, 64, 1280]
        self.feat_module_names = ("pre", *(f"stage{i}" for i in range(1, 8)), "conv1")

    def get_classifier(self) -> nn.Conv2d:
        return self.conv2

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f0 = self.pre(x)
        f1 = self.stage2(self.stage1(f0))
        f2 = self.stage3(f1)
        f3 = self.stage4(f2)
        f4 = self.conv1(self.stage7(self.stage6(self.stage5(f3))))
        pooled = F.adaptive_avg_pool2d(f4, 1)
        logits = torch.flatten(self.conv2(pooled), 1)
        feats = [f0, f1, f2, f3, f4]
        return logits, {"feats": feats, "preact_feats": list(feats), "pooled_feat": torch.flatten(pooled, 1)}
