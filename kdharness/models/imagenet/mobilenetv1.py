"""ImageNet MobileNetV1 of mdistiller (the student of its ResNet50 -> MobileNetV1 pair).

torchvision has no MobileNetV1, so it is written here. The module layout (one
``model`` Sequential: a conv-BN-ReLU stem, 13 depthwise-separable blocks, then the pool;
``fc``) follows mdistiller so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model

# (output channels, stride) of the 13 depthwise-separable blocks after the 32-channel stem.
_DW_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
# Indices in ``model`` of the blocks that end each stage (56x56, 28x28, 14x14, 7x7).
_STAGE_ENDS = (3, 5, 11, 13)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(FeatureHelpers, nn.Module):
    """MobileNetV1 1.0x for 224x224 inputs."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = [_conv_bn(3, 32, 2)]
        in_channels = 32
        for out_channels, stride in _DW_BLOCKS:
            layers.append(_conv_dw(in_channels, out_channels, stride))
            in_channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(1))  # mdistiller: AvgPool2d(7) on the 7x7 map
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)
        self.stage_channels = [128, 256, 512, 1024]
        # The pointwise BN (index 4) of each stage's last block, before its closing ReLU.
        self.bn_before_relu_names = tuple(f"model.{end}.4" for end in _STAGE_ENDS)
        self.feat_module_names = ("model",)

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> ModelOutput:
        preacts, activated = [], []
        start = 0
        for end in _STAGE_ENDS:
            # Blocks up to the stage's last one, which stops before its closing ReLU.
            x = self.model[start:end](x)
            pre = self.model[end][:-1](x)
            preacts.append(pre)
            x = F.relu(pre)
            activated.append(x)
            start = end + 1
        pooled = torch.flatten(self.model[-1](x), 1)
        feats = {
            "feats": activated,
            "preact_feats": preacts,
            "pooled_feat": pooled,
        }
        return self.fc(pooled), feats


def _create_mobilenetv1(variant: str, pretrained: bool, **kwargs: Any) -> MobileNetV1:
    return build_model(MobileNetV1, variant, pretrained, (3, 224, 224), **kwargs)


@register_model
def imagenet_MobileNetV1(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1 1.0x."""
    return _create_mobilenetv1("imagenet_MobileNetV1", pretrained, **kwargs)
