"""CIFAR VGGs of mdistiller: vgg8, vgg11, vgg13, vgg16, vgg19 (all with batch norm).

mdistiller's names map to its ``*_bn`` builders: five conv blocks (``block0`` ... ``block4``)
separated by max-pools and a single linear classifier. Module names and Sequential indices
(``block0.0`` conv, ``block0.1`` BN, ``block0.2`` ReLU, ...) follow mdistiller so its vgg13
teacher loads unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model, init_msra_

# Output channels of each conv in each of the five blocks.
_CFG_S = ((64,), (128,), (256,), (512,), (512,))  # vgg8
_CFG_A = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # vgg11
_CFG_B = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))  # vgg13
_CFG_D = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # vgg16
_CFG_E = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)  # vgg19


def _make_block(channels: Sequence[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """conv(-BN)-ReLU repeated, without the final ReLU: the model applies it to expose the preact."""
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers[:-1])


class VGG(FeatureHelpers, nn.Module):
    """Five conv blocks; 32x32 inputs skip the fourth pool (as in mdistiller), ending at 4x4."""

    def __init__(self, cfg: Sequence[Sequence[int]], batch_norm: bool = True, num_classes: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        in_channels = [3] + [block[-1] for block in cfg[:-1]]
        self.block0 = _make_block(cfg[0], in_channels[0], batch_norm)
        self.block1 = _make_block(cfg[1], in_channels[1], batch_norm)
        self.block2 = _make_block(cfg[2], in_channels[2], batch_norm)
        self.block3 = _make_block(cfg[3], in_channels[3], batch_norm)
        self.block4 = _make_block(cfg[4], in_channels[4], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        self.stage_channels = [block[-1] for block in cfg]
        # Each block ends in its BN (the ReLU is applied in forward).
        self.bn_before_relu_names = tuple(
            f"block{i}.{len(getattr(self, f'block{i}')) - 1}" for i in (1, 2, 3, 4)
        ) if batch_norm else None
        self.feat_module_names = tuple(f"{kind}{i}" for i in range(5) for kind in ("block", "pool"))
        init_msra_(self)

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward(self, x: torch.Tensor) -> ModelOutput:
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        # mdistiller pools here only for 64x64 inputs (Tiny-ImageNet), so CIFAR keeps 4x4.
        f4_pre = self.block4(self.pool3(f3) if height == 64 else f3)
        f4 = F.relu(f4_pre)
        pooled = torch.flatten(self.pool4(f4), 1)
        feats = {
            "feats": [f0, f1, f2, f3, f4],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre, f4_pre],
            "pooled_feat": pooled,
        }
        return self.classifier(pooled), feats


def _create_vgg(variant: str, cfg: Sequence[Sequence[int]], pretrained: bool, **kwargs: Any) -> VGG:
    return build_model(VGG, variant, pretrained, (3, 32, 32), cfg=cfg, batch_norm=True, **kwargs)


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG-8 with BN (mdistiller's vgg8 = vgg8_bn)."""
    return _create_vgg("cifar_vgg8", _CFG_S, pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG-11 with BN."""
    return _create_vgg("cifar_vgg11", _CFG_A, pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG-13 with BN (an mdistiller teacher)."""
    return _create_vgg("cifar_vgg13", _CFG_B, pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG-16 with BN."""
    return _create_vgg("cifar_vgg16", _CFG_D, pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> VGG:
    """VGG-19 with BN."""
    return _create_vgg("cifar_vgg19", _CFG_E, pretrained, **kwargs)
