"""DeepLabV3 (Chen et al., 2017) over any backbone, and what its backbones share.

The contract every segmentation model keeps (the dense distillers, and the dense ICKD
plugin, rely on it):

- ``logits, feats = model(x)``: ``logits`` ``[B, num_classes, H, W]`` at the input's
  resolution (bilinear upsampling, ``align_corners=False``, torchvision's choice);
- ``feats["feats"]``: the backbone's stage outputs, stem first (for feature methods);
- ``feats["decoder"]``: the decoder (head) features ``[B, D, h, w]`` that the classifier
  maps to logits;
- ``feats["dense_logits"]``: ``classifier(decoder)``, ``[B, num_classes, h, w]``, before
  upsampling (where CIRKD computes its distillation losses);
- ``model.get_dense_classifier()``: that classifier, an ``nn.Conv2d(D, num_classes, 1)``,
  so ``logits == upsample(classifier(decoder))`` exactly, in training as in evaluation.

Our choices, beside torchvision's and CIRKD's DeepLabV3:
- head: torchvision's ``ASPP`` (1x1, three atrous 3x3, image pooling; its projection keeps
  its Dropout(0.5)), then a 3x3 conv-BN-ReLU whose output is the decoder feature, then the
  1x1 classifier. No dropout between the decoder feature and the classifier (CIRKD has
  Dropout(0.1) there), so the contract above holds in training too;
- no auxiliary FCN head (CIRKD trains ResNet students with one, weight 0.4);
- ASPP width 512 for the published pairs, as CIRKD (torchvision uses 256).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.segmentation.deeplabv3 import ASPP

from kdharness.models._common import build_model


class DeepLabV3(nn.Module):
    """``backbone`` (``forward(x) -> list of stage features``) + ASPP + decoder conv + 1x1 classifier."""

    def __init__(
        self,
        backbone: nn.Module,
        stage_channels: Sequence[int],
        num_classes: int,
        atrous_rates: Sequence[int],
        head_channels: int,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.stage_channels = list(stage_channels)
        self.aspp = ASPP(self.stage_channels[-1], list(atrous_rates), head_channels)
        self.decoder = nn.Sequential(
            nn.Conv2d(head_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def get_dense_classifier(self) -> nn.Conv2d:
        """The final 1x1 classifier: ``logits = upsample(classifier(feats["decoder"]))``."""
        return self.classifier

    def get_stage_channels(self) -> list[int]:
        """Channels of ``feats["feats"]``, stem first."""
        return list(self.stage_channels)

    def get_backbone(self) -> nn.Module:
        """The backbone, whose state_dict an ImageNet checkpoint fills (`load_backbone_weights`)."""
        return self.backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        stages = self.backbone(x)
        decoder = self.decoder(self.aspp(stages[-1]))
        dense = self.classifier(decoder)
        logits = F.interpolate(dense, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, {"feats": stages, "decoder": decoder, "dense_logits": dense}


def dilate_(stage: nn.Module, dilation: int) -> nn.Module:
    """Turn a stage's stride into dilation, in place: every stride-2 conv gets stride 1 and
    every 3x3 conv dilation (and padding) ``dilation``, so the stage keeps its input's
    resolution and the receptive field it had. The weights' shapes do not change, so
    ImageNet weights still load.

    Our one rule for every backbone (ResNet's basic and bottleneck blocks, MobileNetV2's
    inverted residuals, the CIFAR-style blocks): all 3x3 convs of a dilated stage share its
    dilation (torchvision's ``replace_stride_with_dilation`` keeps the previous dilation for
    a stage's first block, and does not support basic blocks).
    """
    for module in stage.modules():
        if isinstance(module, nn.Conv2d):
            if module.stride == (2, 2):
                module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = (dilation, dilation)
                module.padding = (dilation, dilation)
    return stage


def create_deeplabv3(
    variant: str,
    backbone_fn: Callable[[], tuple[nn.Module, Sequence[int]]],
    pretrained: bool,
    input_size: tuple[int, int, int],
    atrous_rates: Sequence[int],
    head_channels: int,
    **kwargs: Any,
) -> DeepLabV3:
    """The timm entrypoint's body: ``backbone_fn()`` gives ``(backbone, stage_channels)``."""

    def make(num_classes: int = 19) -> DeepLabV3:
        backbone, channels = backbone_fn()
        return DeepLabV3(backbone, channels, num_classes, atrous_rates, head_channels)

    return build_model(make, variant, pretrained, input_size, **kwargs)
