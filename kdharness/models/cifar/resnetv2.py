"""CIFAR versions of the ImageNet ResNets (ResNet18, ResNet50) as in mdistiller.

Four stages, a 3x3 stride-1 stem and no max-pool, so a 32x32 input ends at 4x4. Module
names (``shortcut``, ``linear``) follow mdistiller so its ResNet50 teacher loads unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model, run_stage


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty Sequential, as mdistiller) or a strided 1x1 projection."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs; returns ``(out, preact)``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; returns ``(out, preact)``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class ResNet(FeatureHelpers, nn.Module):
    """Four-stage ResNet (64-128-256-512 base widths) for 32x32 inputs."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int = 100,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        # mdistiller reports these for both block types; kept for API parity.
        self.stage_channels = [256, 512, 1024, 2048]
        last_bn = "bn3" if block is Bottleneck else "bn2"
        self.bn_before_relu_names = tuple(
            f"layer{i}.{n - 1}.{last_bn}" for i, n in zip((1, 2, 3, 4), num_blocks)
        )
        self.feat_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            # Each residual branch starts at zero, so every block begins as the identity.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Linear:
        return self.linear

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = run_stage(self.layer1, f0)
        f2, f2_pre = run_stage(self.layer2, f1)
        f3, f3_pre = run_stage(self.layer3, f2)
        f4, f4_pre = run_stage(self.layer4, f3)
        pooled = torch.flatten(self.avgpool(f4), 1)
        feats = {
            "feats": [f0, f1, f2, f3, f4],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre, f4_pre],
            "pooled_feat": pooled,
        }
        return self.linear(pooled), feats


def _create_resnetv2(
    variant: str, block: type[BasicBlock] | type[Bottleneck], num_blocks: Sequence[int], pretrained: bool, **kwargs: Any
) -> ResNet:
    return build_model(ResNet, variant, pretrained, (3, 32, 32), block=block, num_blocks=num_blocks, **kwargs)


@register_model
def cifar_ResNet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 for CIFAR (basic blocks 2-2-2-2)."""
    return _create_resnetv2("cifar_ResNet18", BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def cifar_ResNet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 for CIFAR (bottlenecks 3-4-6-3; an mdistiller teacher)."""
    return _create_resnetv2("cifar_ResNet50", Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)
