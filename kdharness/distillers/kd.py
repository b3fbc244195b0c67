"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

The student matches the teacher's temperature-softened class distribution. The loss is
scaled by T^2 so that its gradient magnitude stays comparable to cross-entropy when the
temperature changes (the soft-target gradients shrink as 1/T^2). Numbers match mdistiller:
KL summed over classes, averaged over the batch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdharness.config import CLASSIFICATION, SEGMENTATION
from kdharness.distillers._base import Distiller, require_teacher
from kdharness.registry import register_distiller


def kd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))`` (KL summed over classes).

    Both sides are computed in float32 so a mixed-precision run gives the same value.
    """
    log_p_student = F.log_softmax(logits_student.float() / temperature, dim=1)
    p_teacher = F.softmax(logits_teacher.float() / temperature, dim=1)
    per_sample = F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1)
    return per_sample.mean() * temperature**2


@register_distiller("KD")
class KD(Distiller):
    """Cross-entropy on labels plus the temperature-scaled KL to the frozen teacher.

    On segmentation logits ``[B, C, H, W]`` the same loss is a pixel-wise KD at the input's
    resolution (KL over classes, mean over pixels); PIXEL_KD is the field's, on the dense logits.
    """

    tasks = (CLASSIFICATION, SEGMENTATION)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, require_teacher(teacher, "KD"), cfg)
        self.temperature = float(cfg.KD.TEMPERATURE)
        self.ce_loss_weight = float(cfg.KD.LOSS.CE_WEIGHT)
        self.kd_loss_weight = float(cfg.KD.LOSS.KD_WEIGHT)

    def forward_train(self, image: torch.Tensor, target: torch.Tensor, **kwargs: Any):
        logits_student, _ = self.student(image)
        with torch.no_grad():
            logits_teacher, _ = self.teacher(image)
        loss_ce = self.ce_loss_weight * self.ce_loss(logits_student, target)
        loss_kd = self.kd_loss_weight * kd_loss(logits_student, logits_teacher, self.temperature)
        return logits_student, {"loss_ce": loss_ce, "loss_kd": loss_kd}
