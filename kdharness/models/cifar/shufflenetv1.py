"""CIFAR ShuffleNet V1 of mdistiller (``ShuffleV1``: groups 3, 240-480-960 channels).

Module names (``layer1.0.conv1``, ``shortcut``, ``linear``) follow mdistiller so its
checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model, global_pool, run_stage


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*C', H, W] -> interleave the g groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.reshape(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; stride 2 concatenates an avg-pooled shortcut.

    Returns ``(out, preact)``.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The first block after the 24-channel stem cannot split its input into groups.
        g = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(preact), preact


class ShuffleNet(FeatureHelpers, nn.Module):
    """Three stages; each starts with a stride-2 block whose output concatenates its input."""

    def __init__(
        self, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int, num_classes: int = 100
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.stage_channels = [24, *out_planes]  # mdistiller's ShuffleV1 has no get_stage_channels
        self.feat_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3")

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            # The strided block concatenates its (pooled) input, so it produces the rest.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride=stride, groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Linear:
        return self.linear

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = run_stage(self.layer1, f0)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        pooled = global_pool(f3)
        feats = {
            "feats": [f0, f1, f2, f3],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre],
            "pooled_feat": pooled,
        }
        return self.linear(pooled), feats


def _create_shufflenetv1(
    variant: str, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int, pretrained: bool, **kwargs: Any
) -> ShuffleNet:
    return build_model(
        ShuffleNet, variant, pretrained, (3, 32, 32),
        out_planes=out_planes, num_blocks=num_blocks, groups=groups, **kwargs,
    )


@register_model
def cifar_ShuffleV1(pretrained: bool = False, **kwargs: Any) -> ShuffleNet:
    """ShuffleNet V1, 3 groups, 240-480-960 channels, 4-8-4 blocks."""
    return _create_shufflenetv1("cifar_ShuffleV1", (240, 480, 960), (4, 8, 4), 3, pretrained, **kwargs)
