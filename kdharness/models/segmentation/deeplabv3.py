"""DeepLabV3 over torchvision's ResNet-101/50/18 and MobileNetV2, at output stride 8.

The field's segmentation-distillation pairs (CIRKD's recipes): DeepLabV3-ResNet101 (or
-ResNet50) teachers, DeepLabV3-ResNet18 and DeepLabV3-MobileNetV2 students; dilated
backbones at output stride 8 and ASPP rates 12, 24, 36. The backbones are torchvision's
modules with their own parameter names, so an ImageNet checkpoint of torchvision's layout
(``resnet18-f37072fd.pth``, ``mobilenet_v2-b0353104.pth``, ...) fills them
(``DISTILLER.STUDENT_BACKBONE_WEIGHTS``; never downloaded).

Stages: ResNets give ``[stem (after max-pool), layer1, layer2, layer3, layer4]`` at strides
4, 4, 8, 8, 8; layer3 gets dilation 2 and layer4 dilation 4. MobileNetV2 gives the last
block of each width, ``[16, 24, 32, 96, 320]`` channels at strides 2, 4, 8, 8, 8; blocks 7-13
get dilation 2 and 14-17 dilation 4; the final 1x1 conv to 1280 channels is left out, as in
CIRKD's DeepLabV3-MobileNetV2 (its ASPP reads the 320 channels).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
from timm.models import register_model
from torchvision.models import mobilenet_v2, resnet18, resnet50, resnet101

from kdharness.models.segmentation._deeplab import DeepLabV3, create_deeplabv3, dilate_

INPUT_SIZE = (3, 512, 1024)  # Cityscapes' training crop (height, width)
ATROUS_RATES = (12, 24, 36)  # at output stride 8 (DeepLabV3 paper, CIRKD)
HEAD_CHANNELS = 512  # CIRKD's ASPP width


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without its pooling and classifier, layer3/layer4 dilated.

    The modules keep torchvision's names (``conv1``, ``layer1.0.conv1``, ...): an ImageNet
    state_dict loads once its ``fc.*`` entries are dropped (``imagenet_extra_prefixes``).
    """

    imagenet_extra_prefixes = ("fc.",)

    def __init__(self, builder: Callable[..., nn.Module]) -> None:
        super().__init__()
        net = builder(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = dilate_(net.layer3, 2), dilate_(net.layer4, 4)
        self.stage_channels = [
            net.conv1.out_channels,
            *(layer[-1].conv3.out_channels if hasattr(layer[-1], "conv3") else layer[-1].conv2.out_channels
              for layer in (net.layer1, net.layer2, net.layer3, net.layer4)),
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(stem)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 ``features[0:18]`` (its names kept), output stride 8."""

    imagenet_extra_prefixes = ("classifier.", "features.18.")
    # the last block of each width: their outputs are the stages
    STAGE_ENDS = (1, 3, 6, 13, 17)

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*list(mobilenet_v2(weights=None).features)[:18])
        for index in range(7, 14):
            dilate_(self.features[index], 2)
        for index in range(14, 18):
            dilate_(self.features[index], 4)
        self.stage_channels = [self.features[i].out_channels for i in self.STAGE_ENDS]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stages = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self.STAGE_ENDS:
                stages.append(x)
        return stages


def _resnet(builder: Callable[..., nn.Module]) -> Callable[[], tuple[nn.Module, list[int]]]:
    def make() -> tuple[nn.Module, list[int]]:
        backbone = ResNetBackbone(builder)
        return backbone, backbone.stage_channels

    return make


def _mobilenet_v2() -> tuple[nn.Module, list[int]]:
    backbone = MobileNetV2Backbone()
    return backbone, backbone.stage_channels


def _create(variant: str, backbone_fn: Callable, pretrained: bool, **kwargs: Any) -> DeepLabV3:
    return create_deeplabv3(variant, backbone_fn, pretrained, INPUT_SIZE, ATROUS_RATES, HEAD_CHANNELS, **kwargs)


@register_model
def seg_deeplabv3_resnet101(pretrained: bool = False, **kwargs: Any) -> DeepLabV3:
    """DeepLabV3-ResNet101 at output stride 8 (the field's teacher)."""
    return _create("seg_deeplabv3_resnet101", _resnet(resnet101), pretrained, **kwargs)


@register_model
def seg_deeplabv3_resnet50(pretrained: bool = False, **kwargs: Any) -> DeepLabV3:
    """DeepLabV3-ResNet50 at output stride 8 (a smaller teacher)."""
    return _create("seg_deeplabv3_resnet50", _resnet(resnet50), pretrained, **kwargs)


@register_model
def seg_deeplabv3_resnet18(pretrained: bool = False, **kwargs: Any) -> DeepLabV3:
    """DeepLabV3-ResNet18 at output stride 8 (the field's student)."""
    return _create("seg_deeplabv3_resnet18", _resnet(resnet18), pretrained, **kwargs)


@register_model
def seg_deeplabv3_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> DeepLabV3:
    """DeepLabV3-MobileNetV2 at output stride 8 (the field's light student)."""
    return _create("seg_deeplabv3_mobilenetv2", _mobilenet_v2, pretrained, **kwargs)
