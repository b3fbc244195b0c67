"""mdistiller's Tiny-ImageNet models, registered in timm as ``tiny_imagenet_<mdistiller name>``.

mdistiller's ``tiny_imagenet_model_dict``: ResNet18 and ShuffleV2 are its CIFAR
architectures (global pooling makes them work on 64x64 inputs), MobileNetV2 is a model of
its own (`mobilenetv2.py`). Importing this package registers the three.
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from kdharness.models._common import build_model
from kdharness.models.cifar.resnetv2 import BasicBlock, ResNet
from kdharness.models.cifar.shufflenetv2 import ShuffleNetV2
from kdharness.models.tiny_imagenet.mobilenetv2 import MobileNetV2

INPUT_SIZE = (3, 64, 64)


@register_model
def tiny_imagenet_ResNet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-18 (basic blocks 2-2-2-2) on 64x64 inputs; mdistiller's Tiny-ImageNet teacher."""
    kwargs.setdefault("num_classes", 200)
    return build_model(ResNet, "tiny_imagenet_ResNet18", pretrained, INPUT_SIZE, block=BasicBlock, num_blocks=(2, 2, 2, 2), **kwargs)


@register_model
def tiny_imagenet_ShuffleV2(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """CIFAR ShuffleNet V2 1x on 64x64 inputs."""
    kwargs.setdefault("num_classes", 200)
    return build_model(ShuffleNetV2, "tiny_imagenet_ShuffleV2", pretrained, INPUT_SIZE, net_size=1, **kwargs)


@register_model
def tiny_imagenet_MobileNetV2(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """Full-width MobileNetV2 for 64x64 inputs (mdistiller's ``mobilenetv2_tinyimagenet``)."""
    kwargs.setdefault("num_classes", 200)
    return build_model(MobileNetV2, "tiny_imagenet_MobileNetV2", pretrained, INPUT_SIZE, **kwargs)
