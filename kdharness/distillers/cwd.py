"""CWD: Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction" (ICCV 2021).

Each channel of a logit map is turned into a distribution over positions (a softmax over
the ``h * w`` pixels at temperature T), and the student's is matched to the teacher's by
KL: ``T^2 / (B * C) * sum_{b, c} KL(p_t[b, c] || p_s[b, c])``, the paper's normalisation
by channels and CIRKD's ``CriterionCWD(norm_type="channel", divergence="kl")``. Applied to
the dense logits at the decoder's resolution, as CIRKD does (`_dense.py`); every pixel
counts. Defaults (``CFG.CWD``): CIRKD's Cityscapes setting for logits, T = 4 and weight 3.
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
def cwd_loss(logits_student: torch.Tensor, logits_teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Channel-wise KL of spatial softmaxes of ``[B, C, H, W]`` maps, over ``B * C``, times ``T^2``."""
    batch, channels = logits_student.shape[:2]
    log_p_student = F.log_softmax(logits_student.reshape(batch, channels, -1) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(logits_teacher.reshape(batch, channels, -1) / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
    return kl / (batch * channels) * temperature**2


@register_distiller("CWD")
class CWD(FeatureDistiller):
    """Per-pixel cross-entropy plus ``CWD.LOSS.FEAT_WEIGHT * cwd_loss`` on the dense logits."""

    tasks = (SEGMENTATION,)

    def __init__(self, student: nn.Module, teacher: nn.Module, cfg: Any) -> None:
        super().__init__(student, teacher, cfg, "CWD")
        self.temperature = float(cfg.CWD.TEMPERATURE)

    def feature_loss(self, feats_student: dict[str, Any], feats_teacher: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        return cwd_loss(*dense_logits(feats_student, feats_teacher), self.temperature)
