"""CIFAR MobileNetV2 of mdistiller (its ``mobile_half``: expansion 6, width 0.5).

Module names (``conv1.0``, ``blocks.i.j.conv.k``, ``conv2``, ``classifier.0``) follow
mdistiller so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model, global_pool, init_msra_


def _conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - linear project (1x1), residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(FeatureHelpers, nn.Module):
    """MobileNetV2 for 32x32 inputs: stride-2 stem, then the standard (t, c, n, s) settings."""

    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        settings = [  # t, c, n, s
            (1, 16, 1, 1),
            (expansion, 24, 2, 1),
            (expansion, 32, 3, 2),
            (expansion, 64, 4, 2),
            (expansion, 96, 3, 1),
            (expansion, 160, 3, 2),
            (expansion, 320, 1, 1),
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in settings:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.stage_channels = [int(c * width_mult) for c in (32, 24, 32, 96, 320)]
        # The projection BN (conv.7) of the last block of each stage that ends a feature.
        self.bn_before_relu_names = tuple(f"blocks.{i}.{len(self.blocks[i]) - 1}.conv.7" for i in (1, 2, 4, 6))
        self.feat_module_names = ("conv1", "blocks")
        init_msra_(self)

    def get_classifier(self) -> nn.Linear:
        return self.classifier[0]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f0 = self.conv1(x)
        out = self.blocks[1](self.blocks[0](f0))
        f1 = out
        out = self.blocks[2](out)
        f2 = out
        out = self.blocks[4](self.blocks[3](out))
        f3 = out
        out = self.blocks[6](self.blocks[5](out))
        f4 = out
        pooled = global_pool(self.conv2(out))
        feats = {
            "feats": [f0, f1, f2, f3, f4],
            # mdistiller omits this key for MobileNetV2. Every block ends in a linear
            # projection (no ReLU), so its features already are pre-activations; we expose
            # them so methods that read "preact_feats" work with this student too.
            "preact_feats": [f0, f1, f2, f3, f4],
            "pooled_feat": pooled,
        }
        return self.classifier(pooled), feats


def _create_mobilenetv2(
    variant: str, expansion: int, width_mult: float, pretrained: bool, **kwargs: Any
) -> MobileNetV2:
    return build_model(
        MobileNetV2, variant, pretrained, (3, 32, 32), expansion=expansion, width_mult=width_mult, **kwargs
    )


@register_model
def cifar_MobileNetV2(pretrained: bool = False, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 at half width, expansion 6 (mdistiller's ``mobile_half``)."""
    return _create_mobilenetv2("cifar_MobileNetV2", 6, 0.5, pretrained, **kwargs)
