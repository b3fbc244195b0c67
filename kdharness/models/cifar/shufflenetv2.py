"""CIFAR ShuffleNet V2 of mdistiller (``ShuffleV2``: net size 1, 116-232-464 channels).

Module names (``layer1.0`` the down-sampling block, ``layer1.1...`` the basic blocks,
``conv2``, ``linear``) follow mdistiller so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model

from kdharness.models._common import FeatureHelpers, ModelOutput, build_model, global_pool

# net size -> stage widths (last: the 1x1 conv before pooling) and blocks per stage.
_CONFIGS: dict[float, dict[str, tuple[int, ...]]] = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


def _channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.size()
    return x.reshape(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class BasicBlock(nn.Module):
    """Split channels in half, transform one half, concatenate, shuffle; returns ``(out, preact)``."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(x.size(1) * self.split_ratio)
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        branch_pre = self.bn3(self.conv3(out))
        out = _channel_shuffle(torch.cat([x1, F.relu(branch_pre)], 1))
        # As mdistiller: the preact is the unshuffled concatenation.
        return out, torch.cat([x1, branch_pre], 1)


class DownBlock(nn.Module):
    """Stride-2 block: two branches (depthwise-first / pointwise-first), concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=2, padding=1, groups=mid_channels, bias=False
        )
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _channel_shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(FeatureHelpers, nn.Module):
    """1x1 stem (no down-sampling, for 32x32), three stages, a 1x1 conv, global pool, linear."""

    def __init__(self, net_size: float = 1, num_classes: int = 100) -> None:
        super().__init__()
        if net_size not in _CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(_CONFIGS)}; got {net_size}")
        out_channels: Sequence[int] = _CONFIGS[net_size]["out_channels"]
        num_blocks: Sequence[int] = _CONFIGS[net_size]["num_blocks"]
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.stage_channels = [24, *out_channels[:-1]]  # stem, then the three stages
        self.feat_module_names = ("conv1", "bn1", "layer1", "layer2", "layer3")

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    @staticmethod
    def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = stage[0](x)
        preact = x
        for block in stage[1:]:
            x, preact = block(x)
        return x, preact

    def get_classifier(self) -> nn.Linear:
        return self.linear

    def forward(self, x: torch.Tensor) -> ModelOutput:
        f0 = F.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = self._run_stage(self.layer1, f0)
        f2, f2_pre = self._run_stage(self.layer2, f1)
        f3, f3_pre = self._run_stage(self.layer3, f2)
        pooled = global_pool(F.relu(self.bn2(self.conv2(f3))))
        feats = {
            "feats": [f0, f1, f2, f3],
            "preact_feats": [f0, f1_pre, f2_pre, f3_pre],
            "pooled_feat": pooled,
        }
        return self.linear(pooled), feats


def _create_shufflenetv2(variant: str, net_size: float, pretrained: bool, **kwargs: Any) -> ShuffleNetV2:
    return build_model(ShuffleNetV2, variant, pretrained, (3, 32, 32), net_size=net_size, **kwargs)


@register_model
def cifar_ShuffleV2(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 1x (116-232-464 channels, 3-7-3 blocks)."""
    return _create_shufflenetv2("cifar_ShuffleV2", 1, pretrained, **kwargs)
