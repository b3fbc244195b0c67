"""CIFAR ResNets of mdistiller (resnet8 ... resnet110, resnet8x4, resnet32x4).

The 6n+2 "He et al. CIFAR" ResNets with three stages. Module names (``conv1``, ``layer1.0``,
``downsample``, ``fc``) follow mdistiller so its teacher checkpoints (resnet56, resnet110,
resnet32x4) load unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model, global_pool, run_stage


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn + shortcut; returns ``(out, preact)`` so stages expose the pre-ReLU sum."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + residual
        return F.relu(preact), preact


class ResNet(FeatureHelpers, nn.Module):
    """Three-stage CIFAR ResNet of depth 6n+2; ``num_filters`` = (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, num_filters: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...); got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(num_filters[2], blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(num_filters[3], blocks_per_stage, stride=2)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        self.stage_channels = list(num_filters)
        self.bn_before_relu_names = tuple(f"layer{i}.{blocks_per_stage - 1}.bn2" for i in (1, 2, 3))
        self.feat_module_names = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3")

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f0 = self.relu(self.bn1(self.conv1(x)))  # 32x32
        f1, f1_pre = run_stage(self.layer1, f0)  # 32x32
        f2, f2_pre = run_stage(self.layer2, f1)  # 16x16
        f3, f3_pre = run_stage(self.layer3, f2)  # 8x8
        pooled = global_pool(f3)
        feats = {
            "feats": [f0, f1, f2, f3],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre],
            "pooled_feat": pooled,
        }
        return self.fc(pooled), feats


def _create_resnet(variant: str, depth: int, num_filters: Sequence[int], pretrained: bool, **kwargs: Any) -> ResNet:
    return build_model(ResNet, variant, pretrained, (3, 32, 32), depth=depth, num_filters=num_filters, **kwargs)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)  # the "x4" variants


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-8, 16-32-64 channels."""
    return _create_resnet("cifar_resnet8", 8, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-14, 16-32-64 channels."""
    return _create_resnet("cifar_resnet14", 14, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-20, 16-32-64 channels."""
    return _create_resnet("cifar_resnet20", 20, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-32, 16-32-64 channels."""
    return _create_resnet("cifar_resnet32", 32, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-44, 16-32-64 channels."""
    return _create_resnet("cifar_resnet44", 44, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-56, 16-32-64 channels (an mdistiller teacher)."""
    return _create_resnet("cifar_resnet56", 56, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-110, 16-32-64 channels (an mdistiller teacher)."""
    return _create_resnet("cifar_resnet110", 110, _NARROW, pretrained, **kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-8 with 4x wider stages, 64-128-256 channels."""
    return _create_resnet("cifar_resnet8x4", 8, _WIDE, pretrained, **kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-32 with 4x wider stages, 64-128-256 channels (an mdistiller teacher)."""
    return _create_resnet("cifar_resnet32x4", 32, _WIDE, pretrained, **kwargs)
