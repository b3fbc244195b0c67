"""Pixel-wise KD: Hinton et al.'s KD applied to every pixel, the segmentation baseline.

Each pixel's class distribution at temperature T is matched to the teacher's, as in CIRKD's
``CriterionKD`` (Yang et al., CVPR 2022) and the works it compares with: KL summed over
classes, averaged over every pixel of the batch, scaled by T^2. Computed on the dense
logits at the decoder's resolution (`_dense.py`). Our choice, CIRKD's: every pixel counts,
those labelled with the ignore index included (the teacher predicts them all; the labels'
ignore regions are not downsampled to the logits' resolution). Defaults (``CFG.PIXEL_KD``):
CIRKD's, T = 1 and weights 1 and 1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.config import SEGMENTATION
from kdharness.distillers._base import FeatureDistiller
from kdharness.distillers._dense import dense_logits
from kdharness.distillers._numerics import float32_loss
from kdharness.registry import register_distiller


@float32_loss
def pixel_kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_{b, h, w} KL(softmax_c(t / T) || softmax_c(s / T))`` of ``[B, C, H, W]`` maps."""
    log_p_student = F.log_softmax(logits_student / temperature, dim=1)
    log_p_teacher = F.log_softmax(logits_teacher / temperature, dim=1)
    per_pixel = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return per_pixel.mean() * temperature**2


@register_distiller("PIXEL_KD")
class PixelKD(FeatureDistiller):
    """Per-pixel cross-entropy plus ``PIXEL_KD.LOSS.KD_WEIGHT * pixel_kd_loss`` on the dense logits."""

    tasks = (SEGMENTATION,)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "PIXEL_KD", feat_weight="LOSS.KD_WEIGHT")
        self.temperature = float(cfg.PIXEL_KD.TEMPERATURE)

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return pixel_kd_loss(*dense_logits(feats_student, feats_teacher), self.temperature)
