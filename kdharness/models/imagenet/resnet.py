"""ImageNet ResNet-18/34/50 of mdistiller, built on torchvision's definitions.

torchvision's module layout (``conv1``, ``layer1.0.downsample``, ``fc``) is exactly
mdistiller's, so torchvision's and mdistiller's ImageNet checkpoints load unchanged. What
differs is where the ReLU sits: mdistiller moves each block's closing ReLU to the start of
the next block, so every stage returns its pre-activation (for "preact_feats"). The values
computed are the same as torchvision's; only the blocks' ``forward`` is overridden.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model
from torchvision.models import resnet as tv_resnet

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's basic block returning the pre-ReLU sum; it activates its input instead."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + identity


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's bottleneck (stride on the 3x3) returning the pre-ReLU sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + identity


class ResNet(FeatureHelpers, tv_resnet.ResNet):
    """torchvision's ResNet whose forward returns ``(logits, feats)`` as mdistiller."""

    def __init__(
        self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], num_classes: int = 1000
    ) -> None:
        super().__init__(block, list(layers), num_classes=num_classes)
        self.num_classes = num_classes
        self.stage_channels = [256, 512, 1024, 2048]  # as mdistiller reports, for both block types
        # mdistiller leaves layer1 out here (three BNs, for layer2..layer4).
        last_bn = "bn3" if block is Bottleneck else "bn2"
        self.bn_before_relu_names = tuple(f"layer{i}.{layers[i - 1] - 1}.{last_bn}" for i in (2, 3, 4))
        self.feat_module_names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor) -> ModelOutput:
        # mdistiller keeps the stem BN output as its "preact" but then applies an in-place
        # ReLU to that very tensor, so both lists carry the activated stem; so do we.
        stem = self.relu(self.bn1(self.conv1(x)))
        feat1 = self.layer1(self.maxpool(stem))
        feat2 = self.layer2(feat1)
        feat3 = self.layer3(feat2)
        feat4 = self.layer4(feat3)
        pooled = torch.flatten(self.avgpool(F.relu(feat4)), 1)
        feats = {
            "feats": [stem, F.relu(feat1), F.relu(feat2), F.relu(feat3), F.relu(feat4)],
            "preact_feats": [stem, feat1, feat2, feat3, feat4],
            "pooled_feat": pooled,
        }
        return self.fc(pooled), feats


def _create_resnet(
    variant: str, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], pretrained: bool, **kwargs: Any
) -> ResNet:
    return build_model(ResNet, variant, pretrained, (3, 224, 224), block=block, layers=layers, **kwargs)


@register_model
def imagenet_ResNet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2)."""
    return _create_resnet("imagenet_ResNet18", BasicBlock, (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def imagenet_ResNet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 (basic blocks 3-4-6-3; mdistiller's ImageNet teacher for ResNet18)."""
    return _create_resnet("imagenet_ResNet34", BasicBlock, (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def imagenet_ResNet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 (bottlenecks 3-4-6-3; mdistiller's ImageNet teacher for MobileNetV1)."""
    return _create_resnet("imagenet_ResNet50", Bottleneck, (3, 4, 6, 3), pretrained, **kwargs)
