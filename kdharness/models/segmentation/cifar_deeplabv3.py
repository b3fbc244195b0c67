"""A small DeepLabV3 over a CIFAR-style ResNet: a teacher/student pair that trains on a CPU.

For Fashion-MNIST scenes (64x64 canvases, 11 classes), where the published pairs would take
hours per epoch on a CPU. Our design: a 3x3 stem of stride 2, then three stages of
torchvision ``BasicBlock``s (the CIFAR ResNet's 6n+2 layout); the second stage halves the
resolution, the third is dilated (2) instead: output stride 4, a 16x16 map for a 64x64 scene.
The ASPP head reads the last stage with rates 2, 4, 6 (a 16x16 map has no use for CIRKD's
12, 24, 36). Stages: ``[stem, layer1, layer2, layer3]`` at strides 2, 2, 4, 4.

- ``deeplabv3_cifar_resnet14x2``, the teacher: 2 blocks per stage, widths 32-32-64-128, head 128;
- ``deeplabv3_cifar_resnet8``, the student: 1 block per stage, widths 16-16-32-64, head 64.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models import register_model
from torchvision.models.resnet import BasicBlock

from kdharness.models.segmentation._deeplab import DeepLabV3, create_deeplabv3, dilate_

INPUT_SIZE = (3, 64, 64)
ATROUS_RATES = (2, 4, 6)


class CifarResNetBackbone(nn.Module):
    """Stem (3x3, stride 2) + three stages of ``blocks`` basic blocks; the third dilated."""

    def __init__(self, widths: Sequence[int], blocks: int) -> None:
        super().__init__()
        stem, *stages = widths
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        self.layer1 = self._stage(stem, stages[0], blocks, stride=1)
        self.layer2 = self._stage(stages[0], stages[1], blocks, stride=2)
        self.layer3 = dilate_(self._stage(stages[1], stages[2], blocks, stride=2), 2)
        self.stage_channels = list(widths)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(inplanes, planes, stride, downsample)]
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.layer1(f0)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f0, f1, f2, f3]


def _create(variant: str, widths: Sequence[int], blocks: int, head: int, pretrained: bool, **kwargs: Any) -> DeepLabV3:
    def backbone() -> tuple[nn.Module, list[int]]:
        net = CifarResNetBackbone(widths, blocks)
        return net, net.stage_channels

    kwargs.setdefault("num_classes", 11)
    return create_deeplabv3(variant, backbone, pretrained, INPUT_SIZE, ATROUS_RATES, head, **kwargs)


@register_model
def seg_deeplabv3_cifar_resnet14x2(pretrained: bool = False, **kwargs: Any) -> DeepLabV3:
    """The scenes teacher: 2 blocks per stage, widths 32-32-64-128, ASPP 128."""
    return _create("seg_deeplabv3_cifar_resnet14x2", (32, 32, 64, 128), 2, 128, pretrained, **kwargs)


@register_model
def seg_deeplabv3_cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> DeepLabV3:
    """The scenes student: 1 block per stage, widths 16-16-32-64, ASPP 64."""
    return _create("seg_deeplabv3_cifar_resnet8", (16, 16, 32, 64), 1, 64, pretrained, **kwargs)
